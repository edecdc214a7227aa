"""graph_pagerank: PageRank of a generated scale-free graph with igraph (SeBS's 501.graph-pagerank)."""

import time

import igraph

from .graphgen import graph_edges

# igraph's first graph pays a one-off initialisation (~0.3 s): pay it at import time
igraph.Graph(n=2, edges=[(0, 1)])


def handler(event):
    n, m = int(event["vertices"]), int(event["edges_per_vertex"])
    t0 = time.perf_counter()
    edges, _ = graph_edges(n, m, int(event["seed"]))
    g = igraph.Graph(n=n, edges=edges, directed=False)
    t1 = time.perf_counter()
    ranks = g.pagerank(damping=float(event.get("damping", 0.85)))
    t2 = time.perf_counter()
    top = sorted(range(n), key=lambda v: -ranks[v])[:10]
    return {
        "result": {
            "vertices": g.vcount(),
            "edges": g.ecount(),
            "sum": float(sum(ranks)),
            "min": float(min(ranks)),
            "max": float(max(ranks)),
            "top": [[v, float(ranks[v])] for v in top],
        },
        "measurement": {
            "graph_generating_time": (t1 - t0) * 1e6,
            "compute_time": (t2 - t1) * 1e6,
        },
    }
