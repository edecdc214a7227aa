"""graph_bfs: breadth-first search of a generated graph with igraph (SeBS's 503.graph-bfs).

The graph is a connected scale-free part plus a separate path of `unreachable` vertices, so
the search must visit exactly the scale-free part.
"""

import time

import igraph

from .graphgen import graph_edges

# igraph's first graph pays a one-off initialisation (~0.3 s): pay it at import time
igraph.Graph(n=2, edges=[(0, 1)])


def handler(event):
    n, m, k = int(event["vertices"]), int(event["edges_per_vertex"]), int(event["unreachable"])
    t0 = time.perf_counter()
    edges, _ = graph_edges(n, m, int(event["seed"]))
    edges += [(n + i, n + i + 1) for i in range(k - 1)]
    g = igraph.Graph(n=n + k, edges=edges, directed=False)
    t1 = time.perf_counter()
    order, layers, parents = g.bfs(int(event.get("root", 0)))
    t2 = time.perf_counter()
    return {
        "result": {
            "vertices": g.vcount(),
            "visited": len(order),
            "distinct_visited": len(set(order)),
            "layer_sizes": [layers[i + 1] - layers[i] for i in range(len(layers) - 1)],
            "root_parent": parents[int(event.get("root", 0))],
        },
        "measurement": {
            "graph_generating_time": (t1 - t0) * 1e6,
            "compute_time": (t2 - t1) * 1e6,
        },
    }
