"""matmul: build two n x n matrices and multiply them with numpy (BLAS)."""

import time

import numpy as np


def matrices(n, s):
    i = np.arange(n, dtype=np.int64)
    a = ((31 * i[:, None] + 17 * i[None, :] + s) % 101) / 101.0
    b = 1.0 - ((13 * i[:, None] + 7 * i[None, :] + 3 * s) % 97) / 97.0
    return a, b


def handler(event):
    n = int(event["n"])
    s = int(event["seed"])
    t0 = time.perf_counter()
    a, b = matrices(n, s)
    t1 = time.perf_counter()
    c = a @ b
    t2 = time.perf_counter()
    positions = [(0, 0), (n - 1, n - 1), (n // 2, n // 3), (n // 3, n - 1), (n - 1, 0)]
    return {
        "result": {
            "shape": list(c.shape),
            "sum": float(c.sum()),
            "samples": [[i, j, float(c[i, j])] for i, j in positions],
        },
        "measurement": {
            "generate_time": (t1 - t0) * 1e6,
            "compute_time": (t2 - t1) * 1e6,
            "gflops": 2.0 * n ** 3 / max(t2 - t1, 1e-9) / 1e9,
        },
    }
