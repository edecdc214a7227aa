"""graph_mst: igraph minimum spanning tree (SeBS's 502.graph-mst) of a generated weighted graph.

Graph: benchmarks/_shared/synth.py graph_edges (connected, integer weights 1..1000). The
validator runs Kruskal's algorithm itself and requires the same total weight (exact: integer
weights), n - 1 tree edges and a connected tree.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

PARAMS = {
    "test": {"vertices": 64, "edges_per_vertex": 4, "seed": 91},
    "small": {"vertices": 10000, "edges_per_vertex": 10, "seed": 92},
    "large": {"vertices": 100000, "edges_per_vertex": 10, "seed": 93},
}


def buckets_count():
    return (0, 0)


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    return dict(PARAMS[synth.pick_size(data_dir, size, PARAMS)])


def kruskal_weight(n, edges, weights):
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    total = used = 0
    for i in sorted(range(len(edges)), key=weights.__getitem__):
        a, b = find(edges[i][0]), find(edges[i][1])
        if a != b:
            parent[a] = b
            total += weights[i]
            used += 1
            if used == n - 1:
                break
    return total


def validate(event, output):
    try:
        result = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        n = event["vertices"]
        edges, weights = synth.graph_edges(n, event["edges_per_vertex"], event["seed"])
        return (result["vertices"] == n and result["edges"] == len(edges)
                and result["tree_vertices"] == n and result["tree_edges"] == n - 1
                and result["tree_connected"] is True
                and result["tree_weight"] == kruskal_weight(n, edges, weights))
    except (KeyError, TypeError):
        return False
