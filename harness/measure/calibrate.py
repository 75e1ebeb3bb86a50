"""The machine's ceilings, measured: the matrix-multiply peak and the memory bandwidth.

**Compute.** For each device, dtype and thread count of a run, square matrix products of
growing size are timed; the best rate is the peak (a peak is a best case: the maximum, not the
median). Inputs in bfloat16 or float16 can always be multiplied exactly in float32, so for them
the float32 product is tried too and the faster of the two is the ceiling: on a CPU without
bfloat16 matrix units a kernel that upcasts reaches the float32 rate, far above a native
bfloat16 product (1.5 GFLOP/s against 190 on one AVX2 machine), and no record may exceed the
ceiling it is set against. The smallest product that reaches 90% of the peak becomes the
*probe*: timed interleaved with every case (:mod:`attnbench.measure.timing`), so that each record is
set against a rate measured in the same stretch of time, on a busy machine too.

**Memory.** STREAM's triad, ``a = b + s·c``, over arrays much larger than the last-level cache
(three arrays' bytes per pass); a memory-bound case is probed with a triad over as many bytes
as it moves, so that a cache that fits in the processor's caches is set against the bandwidth
of that cache level, not of main memory.

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnbench.case.problem import torch_dtype
from attnbench.measure.devices import Clock, device

Call = Callable[[], object]
LOW_PRECISION = ("bfloat16", "float16")
#: Arrays of this many bytes each for the run-level triad (far above any last-level cache).
STREAM_BYTES = 256 * 2**20
#: Grow the product while the next size's call is predicted under this many seconds.
MAX_CALL_S = 0.5


@dataclass(frozen=True)
class GemmProbe:
    """``a @ b`` with ``n × n`` matrices in ``dtype`` on ``device``."""

    device: str
    dtype: str
    n: int

    @property
    def flops(self) -> float:
        return 2.0 * self.n**3

    @property
    def label(self) -> str:
        return f"matmul {self.dtype} n={self.n}"

    @property
    def footprint(self) -> int:
        """Bytes it holds while timed: both inputs and one product."""
        return 3 * self.n * self.n * torch.finfo(torch_dtype(self.dtype)).bits // 8

    def build(self) -> Call:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(self.n, self.n, generator=gen).to(
            device=device(self.device).torch, dtype=torch_dtype(self.dtype)
        )
        b = torch.randn(self.n, self.n, generator=gen).to(device=a.device, dtype=a.dtype)  # [n, n]
        return lambda: a @ b


@dataclass(frozen=True)
class StreamProbe:
    """STREAM's triad ``a = b + 3·c`` over float32 arrays of ``elements`` each."""

    device: str
    elements: int

    @property
    def bytes(self) -> float:
        return 3.0 * 4 * self.elements

    @property
    def label(self) -> str:
        return f"triad {self.bytes / 2**20:.0f} MiB"

    @property
    def footprint(self) -> int:
        """Bytes it holds: its three arrays."""
        return int(self.bytes)

    def build(self) -> Call:
        where = device(self.device).torch
        b = torch.ones(self.elements, device=where)
        c = torch.ones(self.elements, device=where)
        a = torch.empty(self.elements, device=where)
        return lambda: torch.add(b, c, alpha=3.0, out=a)

    @classmethod
    def moving(cls, where: str, nbytes: float) -> StreamProbe:
        """A triad moving about ``nbytes`` per pass: at least 3 MiB, and at most the run's own
        triad (:data:`STREAM_BYTES` an array), which is far beyond every cache already — a
        64K-token cache of batch 8 moves 4.3 GB a step, and a probe that size doubled what the
        worker held while the case was timed."""
        return cls(where, min(STREAM_BYTES // 4, max(1 << 18, int(nbytes / 12))))


def best_rate(clock: Clock, call: Call, work: float, seconds: float, repeats: int = 3) -> tuple[float, float]:
    """``(best work per second, seconds of one call)`` over ``repeats`` calls or ``seconds``."""
    call()  # warm-up
    best_ms = float("inf")
    deadline = time.perf_counter() + seconds
    count = 0
    while count < repeats or time.perf_counter() < deadline:
        best_ms = min(best_ms, clock.time(call))
        count += 1
        if count >= 200:
            break
    return work / (best_ms / 1e3), best_ms / 1e3


def gemm_sizes(where: str) -> tuple[int, ...]:
    return (1024, 2048, 4096, 8192) if device(where).is_gpu else (256, 512, 1024, 2048)


def calibrate_gemm(where: str, dtype: str, seconds: float = 0.3) -> dict[str, object]:
    """The matmul peak for inputs of ``dtype`` on ``where`` (see the module), and the probe to
    interleave with cases: ``{"gflops", "gemm_dtype", "gemm_n", "probe_dtype", "probe_n", "rates"}``."""
    clock = Clock(device(where))
    rates: dict[str, dict[int, float]] = {}
    candidates = [dtype] + (["float32"] if dtype in LOW_PRECISION else [])
    for compute in candidates:
        rates[compute] = {}
        for n in gemm_sizes(where):
            probe = GemmProbe(where, compute, n)
            rate, call_s = best_rate(clock, probe.build(), probe.flops, seconds)
            rates[compute][n] = rate / 1e9
            if call_s * 8 > MAX_CALL_S:
                break
    best_dtype, best_n = max(((c, n) for c in rates for n in rates[c]), key=lambda cn: rates[cn[0]][cn[1]])
    peak = rates[best_dtype][best_n]
    probe_n = min(n for n, r in rates[best_dtype].items() if r >= 0.9 * peak)
    return {
        "gflops": peak,
        "gemm_dtype": best_dtype,
        "gemm_n": best_n,
        "probe_dtype": best_dtype,
        "probe_n": probe_n,
        "rates": {c: {str(n): round(r, 2) for n, r in by.items()} for c, by in rates.items()},
    }


def calibrate_stream(where: str, seconds: float = 0.3) -> dict[str, object]:
    """The triad bandwidth over arrays of :data:`STREAM_BYTES` each: ``{"gbps", "array_bytes"}``."""
    probe = StreamProbe(where, STREAM_BYTES // 4)
    rate, _ = best_rate(Clock(device(where)), probe.build(), probe.bytes, seconds)
    return {"gbps": rate / 1e9, "array_bytes": STREAM_BYTES}
