"""Timing: warm-up, then interleaved repeats until the spread is small or the budget is spent.

Three calls are timed in alternation (A, B, P, A, B, P, …) in the same process: the
implementation, the baseline, and a machine probe (a fixed matrix product, or a memory sweep for
memory-bound cases; :mod:`attnbench.measure.calibrate`). Ratios taken within one stretch of time are the
figures to trust on a shared, noisy machine: the speedup against the baseline, the throughput
against the probe's rate, and — across runs — the machine's own speed (``compare``).

Each call gets its own repeat count (``inner``), so that calls faster than a millisecond are
repeated enough for the timer's resolution not to count, whatever the others take. The
implementation's samples decide when to stop: at least ``min_repeats`` samples and
``min_time_s`` of its own time, then as soon as its spread (IQR/median) is under 10% or
``max_time_s`` of its own time is spent. ``min_repeats`` is a minimum: the loop goes on past
``max_time_s`` to reach it (the worker's timeout still bounds it). The baseline stops being
sampled once its own time reaches ``baseline_budget_s``, so a slow baseline costs the
implementation nothing; the probe likewise stops at ``probe_budget_s`` (after one sample at least:
a record always carries the probe it was set against).

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from attnbench.measure.devices import Clock

Call = Callable[[], object]
SPREAD_LIMIT = 0.10
#: A sample should take at least this long (ms); faster calls are repeated within it.
SAMPLE_MS = 1.0


@dataclass
class Samples:
    """Raw samples of one callable, in milliseconds per call, and its repeats per sample."""

    ms: list[float] = field(default_factory=list)
    inner: int = 1
    spent_s: float = 0.0  # time spent in these samples (and the first call)

    def quartiles(self) -> tuple[float, float, float]:
        if len(self.ms) == 1:
            return self.ms[0], self.ms[0], self.ms[0]
        q1, med, q3 = statistics.quantiles(self.ms, n=4, method="inclusive")
        return q1, med, q3

    @property
    def median(self) -> float:
        return statistics.median(self.ms)

    @property
    def sampled_s(self) -> float:
        """Seconds spent in the samples themselves (what the figures are made of)."""
        return sum(self.ms) * self.inner / 1e3

    @property
    def spread(self) -> float:
        """IQR / median."""
        q1, med, q3 = self.quartiles()
        return (q3 - q1) / med if med > 0 else math.inf

    def take(self, clock: Clock, fn: Call) -> None:
        ms = clock.time(fn, self.inner)
        self.ms.append(ms)
        self.spent_s += ms * self.inner / 1e3
        self.last_s = ms * self.inner / 1e3

    last_s: float = 0.0  # the last sample's duration (the first call's, before any sample)

    def fits(self, budget_s: float) -> bool:
        """Whether one more sample is expected to end within ``budget_s`` of this call's time."""
        return self.spent_s + self.last_s <= budget_s


@dataclass
class Timing:
    """The outcome of :func:`measure`."""

    impl: Samples
    baseline: Samples | None
    probe: Samples | None
    baseline_error: str = ""  # the baseline raised during the interleaved timing (its samples dropped)

    @property
    def inner(self) -> int:
        return self.impl.inner

    @property
    def unstable(self) -> bool:
        return self.impl.spread >= SPREAD_LIMIT


def inner_for(first_ms: float) -> int:
    """Calls per sample so that a sample lasts at least :data:`SAMPLE_MS`."""
    return 1 if first_ms >= SAMPLE_MS else min(1000, math.ceil(SAMPLE_MS / max(first_ms, 1e-4)))


def _start(clock: Clock, fn: Call, warmup: int, first_ms: float | None = None, keep: bool = False) -> Samples:
    """Warm up and size the repeats, from a first call made here or already (``first_ms``). With
    ``keep`` (the implementation's, warmed up here or by the caller), a sizing call made here
    that alone makes a sample (a call of :data:`SAMPLE_MS` or more) is the first sample rather
    than a call thrown away; the loop then takes the baseline's and the probe's after it."""
    sized_here = first_ms is None and keep
    if first_ms is None:
        for _ in range(warmup):
            fn()
        first_ms = clock.time(fn)
    samples = Samples(inner=inner_for(first_ms), spent_s=first_ms / 1e3)
    samples.last_s = first_ms * samples.inner / 1e3
    if sized_here and samples.inner == 1:
        samples.ms.append(first_ms)
    return samples


def measure(
    fn: Call,
    baseline: Call | None,
    clock: Clock,
    *,
    probe: Call | None = None,
    min_time_s: float = 0.2,
    max_time_s: float = 2.0,
    min_repeats: int = 5,
    baseline_budget_s: float = math.inf,
    baseline_first_ms: float | None = None,
    baseline_spent_s: float = 0.0,
    probe_budget_s: float = math.inf,
    warmup: int = 1,
    on_switch: Callable[[str], None] | None = None,
) -> Timing:
    """Warm up, then time ``fn``, ``baseline`` and ``probe`` alternately (see the module).
    ``warmup`` calls of ``fn`` come first (0: the caller has made its warm-up call already).

    The baseline (warmed up already, in ``baseline_spent_s``, when ``baseline_first_ms`` gives its
    first call) is sampled like the implementation — ``min_repeats`` samples, then until
    ``max_time_s`` of its own — but never past ``baseline_budget_s`` of its own time. A baseline
    that raises is dropped (``baseline_error`` says why) and the implementation's samples stand.
    ``on_switch("baseline")`` is called before each baseline call and ``on_switch("impl")`` after
    it, so that the worker's runner knows whose call a hang or a crash happened in."""
    switch = on_switch or (lambda callee: None)
    impl = _start(clock, fn, warmup, keep=True)
    base: Samples | None = None
    error = ""
    if baseline is not None:
        try:
            switch("baseline")
            base = _start(clock, baseline, warmup, baseline_first_ms)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            switch("impl")
    if base is not None and baseline_spent_s:
        base.spent_s = baseline_spent_s
    machine = _start(clock, probe, 0) if probe is not None else None
    sampled = bool(impl.ms)  # the sizing call was the first sample: the baseline's and the probe's follow it
    while True:
        if not sampled:
            impl.take(clock, fn)
        sampled = False
        wanted = base is not None and (len(base.ms) < min_repeats or base.spent_s < max_time_s)
        if baseline is not None and base is not None and wanted and base.fits(baseline_budget_s):
            try:
                switch("baseline")
                base.take(clock, baseline)
            except Exception as exc:
                error, base = f"{type(exc).__name__}: {exc}", None
            finally:
                switch("impl")
        if probe is not None and machine is not None and (not machine.ms or machine.fits(probe_budget_s)):
            machine.take(clock, probe)
        spent = impl.spent_s
        if len(impl.ms) < max(1, min_repeats):
            continue
        if (spent >= min_time_s and impl.spread < SPREAD_LIMIT) or spent >= max_time_s:
            break
    if base is not None and not base.ms:
        base = None
    if machine is not None and not machine.ms:
        machine = None
    return Timing(impl, base, machine, error[:300])
