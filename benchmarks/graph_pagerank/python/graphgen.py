"""The graph the graph benchmarks work on, generated in the function (timed as SeBS's
`graph_generating_time`); imported by `function.py` relatively, as SeBS's benchmarks import
their own modules."""

import random


def graph_edges(n, m, seed):
    """A connected preferential-attachment graph on vertices 0..n-1 with seeded integer weights.

    Vertex v >= 1 links to min(m, v) distinct earlier vertices, each picked uniformly with
    probability 1/2 and otherwise proportionally to degree (Barabasi-Albert style). Returns
    (edges, weights): a list of (v, u) pairs with u < v and a list of weights in 1..1000.
    A copy of graph_edges in benchmarks/_shared/synth.py, which the validator runs.
    """
    rng = random.Random(seed)
    rand = rng.random
    ends = []
    edges = []
    for v in range(1, n):
        k = m if m < v else v
        chosen = set()
        while len(chosen) < k:
            if ends and rand() < 0.5:
                chosen.add(ends[int(rand() * len(ends))])
            else:
                chosen.add(int(rand() * v))
        for u in sorted(chosen):
            edges.append((v, u))
            ends.append(u)
            ends.append(v)
    weights = [1 + int(rand() * 1000) for _ in range(len(edges))]
    return edges, weights
