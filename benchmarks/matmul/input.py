"""matmul: multiply two n x n float64 matrices with numpy (FunctionBench's matmul idea).

The matrices are defined by a closed form, A[i,k] = a[(31 i + 17 k + s) mod 101] and
B[k,j] = b[(13 k + 7 j + 3 s) mod 97], so this validator can check the product without numpy:
the sum of all entries of C = A B is sum_k colsum_A[k] * rowsum_B[k] (O(n) here, since a
column sum of A depends only on (17 k + s) mod 101), and a few single entries are O(n) each.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

PARAMS = {
    "test": {"n": 64, "seed": 5},
    "small": {"n": 1500, "seed": 6},
    "large": {"n": 3500, "seed": 7},
}


def buckets_count():
    return (0, 0)


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    return dict(PARAMS[synth.pick_size(data_dir, size, PARAMS)])


def a_val(r):
    return (r % 101) / 101.0


def b_val(r):
    return 1.0 - (r % 97) / 97.0


def sample_positions(n):
    return [(0, 0), (n - 1, n - 1), (n // 2, n // 3), (n // 3, n - 1), (n - 1, 0)]


def expected(n, s):
    """(sum of C, {(i, j): C[i, j]} for the sample positions), in pure Python."""
    col_a = [sum(a_val(31 * i + c) for i in range(n)) for c in range(101)]  # by (17k+s)%101
    row_b = [sum(b_val(7 * j + c) for j in range(n)) for c in range(97)]    # by (13k+3s)%97
    total = sum(col_a[(17 * k + s) % 101] * row_b[(13 * k + 3 * s) % 97] for k in range(n))
    entries = {}
    for i, j in sample_positions(n):
        entries[(i, j)] = sum(a_val(31 * i + 17 * k + s) * b_val(13 * k + 7 * j + 3 * s)
                              for k in range(n))
    return total, entries


def _close(x, y, rel=1e-9):
    return abs(x - y) <= rel * max(1.0, abs(x), abs(y))


def validate(event, output):
    try:
        result = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        n, s = event["n"], event["seed"]
        total, entries = expected(n, s)
        got = {(e[0], e[1]): e[2] for e in result["samples"]}
        return (result["shape"] == [n, n] and _close(result["sum"], total)
                and set(got) == set(entries)
                and all(_close(got[k], v) for k, v in entries.items()))
    except (KeyError, TypeError, IndexError):
        return False
