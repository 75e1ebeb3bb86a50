"""How long a pair, and a run, is expected to take: the plan's duration before it starts, the
progress line's time left, the balance of shards and the cut of a ``--max-minutes`` plan.

A pair's call is predicted from the case's work against this machine's measured ceilings: its
dense FLOPs (a closed form: counting a sparse pattern's pairs takes seconds at 128K tokens, and a
prediction need not) over the calibrated matrix-product rate, or its compulsory bytes over the
measured bandwidth (a decode step), whichever is longer, at :data:`EFFICIENCY` of the ceiling.
The pair then costs its fixed :data:`OVERHEAD_S`, a few untimed calls (the first call, the
judged call, the memory pass, the reference on sampled rows) and its timing, the implementation
and its baseline interleaved within the budget's bounds — never more than its three time budgets.

Where earlier runs on this machine (same machine id) measured the same pair, its recorded
``elapsed_s`` is the prediction instead. While a run goes on, :class:`Forecast` scales what is
left by how far the finished pairs' measured time has strayed from their prediction, so the time
left is corrected by the run itself.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnbench.case.problem import Problem
from attnbench.case.work import dense_flops, io_bytes
from attnbench.measure.records import record_key

Pair = tuple[Problem, str]

#: A pair's cost beyond its calls: sending the job, the steps' bookkeeping, the baseline's set-up
#: (the recorded runs' pairs spend 1.2-3.4 s, median, beyond their calls and their timing).
OVERHEAD_S = 1.5
#: Untimed calls of a pair, in units of its call: the first call, the timing's sizing call, the
#: judged call (which is also the memory pass, slower under its allocator), and the float64
#: reference on sampled rows (about two calls).
UNTIMED_CALLS = 5
#: FLOP/s of a nominal device, when no calibration is known; only ratios matter then.
NOMINAL_FLOPS = 5e10
#: The share of a measured ceiling a typical implementation's call reaches: the median of the
#: recorded ``quick`` run's ok records (their dense FLOPs over the calibrated rate) is 0.26.
EFFICIENCY = 0.25


def call_seconds(case: Problem, gflops: float | None = None, gbps: float | None = None) -> float:
    """One call's predicted time: FLOPs over the compute rate, or bytes over the bandwidth."""
    flops_s = dense_flops(case) / ((gflops * 1e9 if gflops else NOMINAL_FLOPS) * EFFICIENCY)
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


def cut(predicted: Sequence[float], limit_s: float, rank: Sequence[int] | None = None) -> set[int]:
    """The pairs (indices) left out so that the rest is predicted to fit ``limit_s``: the highest
    ``rank`` first (a pair's size among its group's: every group then keeps its smaller sizes, as
    far as the limit allows), and within a rank the most expensive first."""
    total = sum(predicted)
    ranks = rank if rank is not None else [0] * len(predicted)
    out: set[int] = set()
    for i in sorted(range(len(predicted)), key=lambda i: (-ranks[i], -predicted[i])):
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


def grown_call(
    measured: Iterable[tuple[int, int, float]], seq_len: int, kv_len: int, growth: float | None
) -> tuple[tuple[int, int, float], float] | None:
    """A call at ``(seq_len, kv_len)`` predicted from the largest smaller ``(seq_len, kv_len,
    call)`` measured, grown as ``(seq_len · kv_len)^(growth / 2)`` (``N^growth`` when both grow
    together): ``(that measurement, the predicted call)``; None without a growth or a smaller size."""
    smaller = [m for m in measured if m[0] <= seq_len and m[1] <= kv_len]
    if not growth or not smaller:
        return None
    base = max(smaller, key=lambda m: m[0] * m[1])
    return base, base[2] * ((seq_len * kv_len) / (base[0] * base[1])) ** (growth / 2)


def group_of(case: Problem, impl: str) -> tuple[Any, ...]:
    """The pairs one measurement informs: one implementation, every case field but the lengths
    (the group of :class:`attnbench.sweep.jobs.Failures`)."""
    return tuple(v for k, v in {"impl": impl, **case.fields()}.items() if k not in ("seq_len", "kv_len"))


@dataclass
class Forecast:
    """The time left of a sweep. A pair whose group (:func:`group_of`) has a smaller size done is
    predicted from that size's measured call, grown as its implementation declares; any other
    pair keeps its plan prediction, scaled by how the finished uninformed pairs' time compared
    with theirs (so a machine slower than its calibration suggests is read off the run itself)."""

    pairs: dict[tuple[Any, ...], Pair]
    planned: dict[tuple[Any, ...], float]
    budget: Mapping[str, float]
    growth: Mapping[str, float | None]
    measured: dict[tuple[Any, ...], list[tuple[int, int, float]]] = field(default_factory=dict)
    rank: dict[tuple[Any, ...], int] = field(default_factory=dict)  # a pair's size among its group's, from 0
    planned_done_s: float = 0.0
    spent_done_s: float = 0.0
    #: Each pair's group, worked out once: :func:`group_of` copies the case's fields, and the
    #: time left is asked of every pair left after each record (1890 pairs: 7 million copies).
    groups: dict[tuple[Any, ...], tuple[Any, ...]] = field(default_factory=dict)
    _expected: dict[tuple[Any, ...], float] | None = None  # every pair's expected seconds, until one finishes
    #: ``finish`` runs on the main thread, ``over`` on each device's (several GPUs at once).
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @classmethod
    def of(
        cls,
        pairs: Sequence[Pair],
        predicted: Sequence[float],
        budget: Mapping[str, float],
        growth: Mapping[str, float | None] | None = None,
    ) -> Forecast:
        keys = [record_key({"impl": impl, **case.fields()}) for case, impl in pairs]
        groups = {key: group_of(case, impl) for key, (case, impl) in zip(keys, pairs, strict=True)}
        sizes: dict[tuple[Any, ...], set[tuple[int, int]]] = {}
        for key, (case, _) in zip(keys, pairs, strict=True):
            sizes.setdefault(groups[key], set()).add((case.seq_len, case.kv_len))
        ordered = {group: sorted(found, key=lambda s: s[0] * s[1]) for group, found in sizes.items()}
        rank = {
            key: ordered[groups[key]].index((case.seq_len, case.kv_len))
            for key, (case, _) in zip(keys, pairs, strict=True)
        }
        planned = dict(zip(keys, predicted, strict=True))
        return cls(dict(zip(keys, pairs, strict=True)), planned, budget, growth or {}, rank=rank, groups=groups)

    def finish(self, key: tuple[Any, ...], elapsed_s: float | None, call_ms: float | None, ran: bool = True) -> None:
        """A pair is done: its seconds (``elapsed_s``) and its call (``call_ms``) when it ran."""
        with self._lock:
            pair = self.pairs.get(key)
            planned = self.planned.pop(key, 0.0)
            if pair is None:
                return
            self._expected = None
            if ran:
                case, _ = pair
                if call_ms:
                    self.measured.setdefault(self._group(key), []).append((case.seq_len, case.kv_len, call_ms / 1e3))
                elif not self._informed(key) and elapsed_s:
                    self.planned_done_s += planned
                    self.spent_done_s += elapsed_s
            self.pairs.pop(key)

    def _group(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        if key not in self.groups:
            self.groups[key] = group_of(*self.pairs[key])
        return self.groups[key]

    def _informed(self, key: tuple[Any, ...]) -> float | None:
        """The pair's seconds predicted from a smaller size of its group measured in this run."""
        case, impl = self.pairs[key]
        measured = self.measured.get(self._group(key), [])
        found = grown_call(measured, case.seq_len, case.kv_len, self.growth.get(impl))
        return None if found is None else pair_seconds(case, self.budget, found[1])

    def pace(self) -> float:
        """Measured over planned, for the pairs no measurement informed (1 before any ran)."""
        return self.spent_done_s / self.planned_done_s if self.planned_done_s > 0 else 1.0

    def expected(self, key: tuple[Any, ...]) -> float:
        return self._all_expected()[key]

    def _all_expected(self) -> dict[tuple[Any, ...], float]:
        """Every pair's expected seconds, kept until a pair finishes (a measurement or the pace
        may then change them)."""
        with self._lock:
            if self._expected is None:
                pace = self.pace()
                informed = {k: self._informed(k) for k in self.pairs}
                self._expected = {k: self.planned[k] * pace if s is None else s for k, s in informed.items()}
            return self._expected

    def seconds_left(self) -> float:
        with self._lock:
            return sum(self._all_expected().values())

    def over(self, key: tuple[Any, ...], seconds_left: float) -> float | None:
        """The pair's expected seconds when it is among those left out so that the rest fits
        ``seconds_left`` (:func:`cut`: the largest sizes of every group first); None when it runs.
        The first size of a group is run while it fits the time left, so that its group's later
        sizes are predicted from a measurement rather than from the plan alone."""
        with self._lock:
            return self._over(key, seconds_left)

    def _over(self, key: tuple[Any, ...], seconds_left: float) -> float | None:
        if key not in self.pairs:
            return None
        everything = self._all_expected()
        mine = everything[key]
        if self._group(key) not in self.measured and mine <= seconds_left:
            return None
        if seconds_left <= 0 and mine > 0:
            return mine  # nothing left to fit: every pair with a cost is cut
        keys = list(self.pairs)
        ranks = [self.rank.get(k, 0) for k in keys]
        left_out = cut([everything[k] for k in keys], max(0.0, seconds_left), ranks)
        return mine if keys.index(key) in left_out else None
