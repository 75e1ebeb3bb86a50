"""Timing: warm-up, then interleaved repeats until the spread is small or the budget is spent.

The implementation and the baseline are timed in alternation (A, B, A, B, …) in the same
process, so their ratio is taken within one stretch of time: on a shared, noisy machine it is
the figure to trust. Raw samples are kept; the median, quartiles and minimum summarise them,
and ``unstable`` marks a spread (IQR/median) that stayed at or above 10%.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Call = Callable[[], object]
SPREAD_LIMIT = 0.10


@dataclass
class Samples:
    """Raw samples of one callable, in milliseconds per call."""

    ms: list[float] = field(default_factory=list)

    def quartiles(self) -> tuple[float, float, float]:
        if len(self.ms) == 1:
            return self.ms[0], self.ms[0], self.ms[0]
        q1, med, q3 = statistics.quantiles(self.ms, n=4, method="inclusive")
        return q1, med, q3

    @property
    def median(self) -> float:
        return statistics.median(self.ms)

    @property
    def spread(self) -> float:
        """IQR / median."""
        q1, med, q3 = self.quartiles()
        return (q3 - q1) / med if med > 0 else math.inf


@dataclass
class Timing:
    """The outcome of :func:`measure`: samples of the implementation and of the baseline."""

    impl: Samples
    baseline: Samples | None
    inner: int  # calls per sample

    @property
    def unstable(self) -> bool:
        return self.impl.spread >= SPREAD_LIMIT


class Clock:
    """Times one call of a callable on a device, in milliseconds."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self._flush: torch.Tensor | None = None
        if self.cuda:
            # 256 MiB zeroed before each sample evicts the L2 cache (as triton's do_bench does).
            self._flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=device)

    def time(self, fn: Call, inner: int = 1) -> float:
        if self.cuda:
            return self._time_cuda(fn, inner)
        start = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        return (time.perf_counter_ns() - start) / 1e6 / inner

    def _time_cuda(self, fn: Call, inner: int) -> float:
        assert self._flush is not None
        total = 0.0
        for _ in range(inner):
            self._flush.zero_()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            begin.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            total += begin.elapsed_time(end)
        return total / inner


def measure(
    fn: Call,
    baseline: Call | None,
    device: str,
    *,
    min_time_s: float = 0.2,
    max_time_s: float = 2.0,
    min_repeats: int = 5,
    warmup: int = 1,
) -> Timing:
    """Warm up, then time ``fn`` and ``baseline`` alternately.

    Stops once at least ``min_repeats`` samples and ``min_time_s`` are spent and the spread of
    ``fn``'s samples is under 10%, or once ``max_time_s`` is spent. Calls faster than about a
    millisecond are repeated ``inner`` times per sample so the timer's resolution does not count.
    """
    clock = Clock(device)
    for _ in range(warmup):
        fn()
        if baseline is not None:
            baseline()
    first = clock.time(fn)
    inner = 1 if first >= 1.0 else min(1000, math.ceil(1.0 / max(first, 1e-4)))
    impl, base = Samples(), Samples() if baseline is not None else None
    start = time.perf_counter()
    while True:
        impl.ms.append(clock.time(fn, inner))
        if baseline is not None and base is not None:
            base.ms.append(clock.time(baseline, inner))
        elapsed = time.perf_counter() - start
        enough = len(impl.ms) >= min_repeats and elapsed >= min_time_s
        if (enough and impl.spread < SPREAD_LIMIT) or (elapsed >= max_time_s and len(impl.ms) >= 3):
            break
    return Timing(impl, base, inner)
