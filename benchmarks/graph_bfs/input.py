"""graph_bfs: igraph breadth-first search (SeBS's 503.graph-bfs) of a generated graph.

Graph: a connected scale-free part (benchmarks/_shared/synth.py graph_edges) plus a separate
path of `unreachable` vertices. The validator runs its own BFS from the root and requires
the same number of vertices at each distance, every reachable vertex visited exactly once
and none of the unreachable ones.
"""

from collections import deque

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

PARAMS = {
    "test": {"vertices": 64, "edges_per_vertex": 4, "unreachable": 5, "seed": 81, "root": 0},
    "small": {"vertices": 10000, "edges_per_vertex": 10, "unreachable": 100, "seed": 82,
              "root": 0},
    "large": {"vertices": 100000, "edges_per_vertex": 10, "unreachable": 1000, "seed": 83,
              "root": 0},
}


def buckets_count():
    return (0, 0)


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    return dict(PARAMS[synth.pick_size(data_dir, size, PARAMS)])


def layer_sizes(n, edges, root):
    adj = [[] for _ in range(n)]
    for v, u in edges:
        adj[v].append(u)
        adj[u].append(v)
    dist = [-1] * n
    dist[root] = 0
    queue = deque([root])
    sizes = [0]
    while queue:
        v = queue.popleft()
        sizes[dist[v]] += 1
        for u in adj[v]:
            if dist[u] < 0:
                dist[u] = dist[v] + 1
                if dist[u] == len(sizes):
                    sizes.append(0)
                queue.append(u)
    return sizes


def validate(event, output):
    try:
        result = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        n, k = event["vertices"], event["unreachable"]
        edges, _ = synth.graph_edges(n, event["edges_per_vertex"], event["seed"])
        edges += [(n + i, n + i + 1) for i in range(k - 1)]
        sizes = layer_sizes(n + k, edges, event["root"])
        return (result["vertices"] == n + k
                and result["visited"] == result["distinct_visited"] == sum(sizes) == n
                and result["layer_sizes"] == sizes)
    except (KeyError, TypeError):
        return False
