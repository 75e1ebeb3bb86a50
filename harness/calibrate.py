"""The machine's measured matrix-multiply peak, the ceiling each record's throughput is set against.

For each device, dtype and thread count of a run, a square matrix product large enough to be
compute-bound is timed several times; the best rate is the peak (a peak is a best case, so the
maximum, not the median, is the right statistic).
"""

from __future__ import annotations

import time

import torch
from attnbench.problem import torch_dtype
from attnbench.timing import Clock


def matmul_peak_gflops(device: str, dtype: str, size: int | None = None, seconds: float = 1.0) -> float:
    """Best GFLOP/s of an ``n×n @ n×n`` product on ``device`` in ``dtype`` over about ``seconds``."""
    n = size or (8192 if device.startswith("cuda") else 1024)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=torch_dtype(dtype))  # [n, n]
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=torch_dtype(dtype))  # [n, n]
    clock = Clock(device)
    clock.time(lambda: a @ b)  # warm-up
    best_ms = float("inf")
    deadline = time.perf_counter() + seconds
    repeats = 0
    while repeats < 3 or time.perf_counter() < deadline:
        best_ms = min(best_ms, clock.time(lambda: a @ b))
        repeats += 1
        if repeats >= 200:
            break
    return 2.0 * n**3 / (best_ms / 1e3) / 1e9
