"""graph_pagerank: igraph PageRank (SeBS's 501.graph-pagerank) of a generated scale-free graph.

Graph: benchmarks/_shared/synth.py graph_edges (connected, seeded). The validator checks the
vertex and edge counts, that the ranks form a distribution (all positive, sum 1 within 1e-6),
and, for graphs of up to 200k edges, the ten top ranks against its own power iteration.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

PARAMS = {
    "test": {"vertices": 64, "edges_per_vertex": 4, "seed": 71, "damping": 0.85},
    "small": {"vertices": 10000, "edges_per_vertex": 10, "seed": 72, "damping": 0.85},
    "large": {"vertices": 100000, "edges_per_vertex": 10, "seed": 73, "damping": 0.85},
}


def buckets_count():
    return (0, 0)


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    return dict(PARAMS[synth.pick_size(data_dir, size, PARAMS)])


def power_iteration(n, edges, d, iterations=100):
    adj = [[] for _ in range(n)]
    for v, u in edges:
        adj[v].append(u)
        adj[u].append(v)
    rank = [1.0 / n] * n
    for _ in range(iterations):
        nxt = [(1.0 - d) / n] * n
        dangling = 0.0
        for v in range(n):
            if adj[v]:
                share = d * rank[v] / len(adj[v])
                for u in adj[v]:
                    nxt[u] += share
            else:
                dangling += d * rank[v]
        rank = [r + dangling / n for r in nxt]
    return rank


def validate(event, output):
    try:
        result = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        n = event["vertices"]
        edges, _ = synth.graph_edges(n, event["edges_per_vertex"], event["seed"])
        top = result["top"]
        ok = (result["vertices"] == n and result["edges"] == len(edges)
              and abs(result["sum"] - 1.0) < 1e-6
              and 0.0 < result["min"] <= result["max"] < 1.0
              and len(top) == min(10, n)
              and all(top[i][1] >= top[i + 1][1] for i in range(len(top) - 1))
              and abs(top[0][1] - result["max"]) < 1e-12)
        if ok and len(edges) <= 200_000:
            ref = power_iteration(n, edges, event["damping"])
            ok = all(abs(ref[v] - r) <= 1e-4 * r for v, r in top)
        return ok
    except (KeyError, TypeError, IndexError):
        return False
