"""graph_mst: minimum spanning tree of a generated weighted graph with igraph
(SeBS's 502.graph-mst)."""

import time

import igraph

from .graphgen import graph_edges

# igraph's first graph pays a one-off initialisation (~0.3 s): pay it at import time
igraph.Graph(n=2, edges=[(0, 1)])


def handler(event):
    n, m = int(event["vertices"]), int(event["edges_per_vertex"])
    t0 = time.perf_counter()
    edges, weights = graph_edges(n, m, int(event["seed"]))
    g = igraph.Graph(n=n, edges=edges, directed=False)
    g.es["weight"] = weights
    t1 = time.perf_counter()
    tree = g.spanning_tree(weights="weight")
    t2 = time.perf_counter()
    return {
        "result": {
            "vertices": g.vcount(),
            "edges": g.ecount(),
            "tree_vertices": tree.vcount(),
            "tree_edges": tree.ecount(),
            "tree_weight": int(sum(tree.es["weight"])),
            "tree_connected": tree.is_connected(),
        },
        "measurement": {
            "graph_generating_time": (t1 - t0) * 1e6,
            "compute_time": (t2 - t1) * 1e6,
        },
    }
