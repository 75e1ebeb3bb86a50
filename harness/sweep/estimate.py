"""How long a pair, and a run, is expected to take: the plan's duration before it starts, the
progress line's time left, the balance of shards and the cut of a ``--max-minutes`` plan.

A pair's call is predicted from the case's work against this machine's measured ceilings: the
FLOPs of its pattern over the calibrated matrix-product rate, or its compulsory bytes over the measured
bandwidth (a decode step), whichever is longer, at :data:`EFFICIENCY` of the ceiling. The pair
then costs its fixed :data:`OVERHEAD_S`, a few untimed calls (the first call, the judged call,
the memory pass, the reference on sampled rows) and its timing, the implementation and its
baseline interleaved within the budget's bounds — never more than its three time budgets.

Where earlier runs on this machine (same machine id) measured the same pair, its recorded
``elapsed_s`` is the prediction instead. While a run goes on, :class:`Forecast` scales what is
left by how far the finished pairs' measured time has strayed from their prediction, so the time
left is corrected by the run itself.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnbench.case.problem import Problem
from attnbench.case.work import io_bytes, softmax_flops
from attnbench.measure.records import record_key

Pair = tuple[Problem, str]

#: A pair's cost beyond its calls: sending the job, the steps' bookkeeping, the baseline's set-up
#: (the recorded runs' pairs spend 1.2-3.4 s, median, beyond their calls and their timing).
OVERHEAD_S = 1.5
#: Untimed calls of a pair, in units of its call: the first call, the timing's sizing call, the
#: judged call, the memory pass, and the float64 reference on sampled rows (about two calls).
UNTIMED_CALLS = 6
#: FLOP/s of a nominal device, when no calibration is known; only ratios matter then.
NOMINAL_FLOPS = 5e10
#: The share of a measured ceiling a typical implementation's call reaches: the median of the
#: recorded ``quick`` run's ok records (its pattern's FLOPs over the calibrated rate) is 0.26.
EFFICIENCY = 0.25


def call_seconds(case: Problem, gflops: float | None = None, gbps: float | None = None) -> float:
    """One call's predicted time: FLOPs over the compute rate, or bytes over the bandwidth."""
    flops_s = softmax_flops(case) / ((gflops * 1e9 if gflops else NOMINAL_FLOPS) * EFFICIENCY)
    bytes_s = io_bytes(case) / (gbps * 1e9 * EFFICIENCY) if gbps else 0.0
    return max(flops_s, bytes_s)


def pair_seconds(case: Problem, budget: Mapping[str, float], call_s: float | None = None) -> float:
    """A pair's predicted wall time (see the module)."""
    call = call_seconds(case) if call_s is None else call_s
    timing = 2 * min(max(budget["min_time_s"], budget["min_repeats"] * call), budget["max_time_s"])
    return min(OVERHEAD_S + UNTIMED_CALLS * call + timing, 3 * budget["timeout_s"])


def history(results_root: Path, machine_id: str, exclude: Path | None = None) -> dict[tuple[Any, ...], float]:
    """``record_key -> elapsed_s`` of the pairs earlier runs under ``results_root`` measured on
    this machine (the latest run wins); ``exclude`` is the run being made."""
    found: dict[tuple[Any, ...], float] = {}
    runs = sorted(p for p in results_root.glob("*/results.jsonl") if exclude is None or p.parent != exclude)
    for path in runs:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("machine") == machine_id and row.get("elapsed_s"):
                try:
                    found[record_key(row)] = float(row["elapsed_s"])
                except (KeyError, TypeError, ValueError):
                    continue
    return found


def plan_seconds(
    pairs: Sequence[Pair],
    budget: Mapping[str, float],
    ceilings: Mapping[tuple[str, str], tuple[float | None, float | None]] | None = None,
    known: Mapping[tuple[Any, ...], float] | None = None,
) -> list[float]:
    """Each pair's predicted seconds: from ``known`` (earlier runs) where it was measured, else
    from the case's work against ``ceilings[(device, dtype)] = (gflops, gbps)``."""
    out = []
    for case, impl in pairs:
        earlier = (known or {}).get(record_key({"impl": impl, **case.fields()}))
        if earlier is not None:
            out.append(min(earlier, 3 * budget["timeout_s"]))
            continue
        gflops, gbps = (ceilings or {}).get((case.device, case.dtype), (None, None))
        out.append(pair_seconds(case, budget, call_seconds(case, gflops, gbps)))
    return out


def ceilings_of(calibration: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    """``(device, dtype) -> (gflops, gbps)`` from a run's calibration entries."""
    return {(str(c.get("device")), str(c.get("dtype"))): (c.get("gflops"), c.get("gbps")) for c in calibration}


def cut(predicted: Sequence[float], limit_s: float) -> set[int]:
    """The pairs (indices) left out so that the rest is predicted to fit ``limit_s``: the most
    expensive first, so that the plan keeps as many pairs as it can."""
    total = sum(predicted)
    out: set[int] = set()
    for i in sorted(range(len(predicted)), key=lambda i: -predicted[i]):
        if total <= limit_s:
            break
        out.add(i)
        total -= predicted[i]
    return out


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class Forecast:
    """The time left of a sweep: the unfinished pairs' predictions, scaled by the wall time the
    finished ones took over what they were predicted to take (so a parallel executor's pace, and
    a machine slower than predicted, are read off the run itself)."""

    left: dict[tuple[Any, ...], float]
    predicted_done_s: float = 0.0

    @classmethod
    def of(cls, pairs: Sequence[Pair], predicted: Sequence[float]) -> Forecast:
        keys = [record_key({"impl": impl, **case.fields()}) for case, impl in pairs]
        return cls(dict(zip(keys, predicted, strict=True)))

    def finish(self, key: tuple[Any, ...], ran: bool = True) -> None:
        """A pair is done; ``ran`` False: it was settled without running (its time is not a measure)."""
        predicted = self.left.pop(key, 0.0)
        self.predicted_done_s += predicted if ran else 0.0

    def pace(self, elapsed_s: float) -> float:
        """Measured over predicted, so far (1 before anything ran)."""
        return elapsed_s / self.predicted_done_s if self.predicted_done_s > 0 and elapsed_s > 0 else 1.0

    def seconds_left(self, elapsed_s: float) -> float:
        return sum(self.left.values()) * self.pace(elapsed_s)

    def over(self, key: tuple[Any, ...], elapsed_s: float, limit_s: float) -> float | None:
        """The pair's expected seconds when it is among those left out so that the rest fits
        ``limit_s`` of wall (:func:`cut`, most expensive first); None when it runs."""
        if key not in self.left:
            return None
        pace = self.pace(elapsed_s)
        keys = list(self.left)
        dropped = cut([self.left[k] * pace for k in keys], max(0.0, limit_s - elapsed_s))
        return self.left[key] * pace if keys.index(key) in dropped else None
