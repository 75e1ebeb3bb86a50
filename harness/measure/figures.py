"""A record's figures from its raw measurements: one formula for each, used where they are measured
and again wherever records are read back.

The worker keeps every raw sample (the implementation's, the interleaved baseline's, the machine
probe's) and the work one call does (FLOPs and bytes, as the implementation counts them); the
run keeps its calibration. Every figure a report or a table shows is derived from those by the
functions here: the median and quartiles, the speedup against the baseline, the FLOP and byte
rates, the ceilings they are set against (the larger of the run's calibration and the probe timed
beside the case) and the fractions of them. :func:`derive` is applied when a result folder is
loaded (:mod:`attnbench.results.read`), so a recorded run is always read with today's formulas, and a
formula broken here shows in every figure read back, not only in new runs.

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from attnbench.case.modes import FORWARD, MODES
from attnbench.case.status import Status

#: What a case job takes from the calibration of its device, dtype and threads.
CALIBRATION_KEYS = ("gflops", "probe_dtype", "probe_n", "gbps")


def quartiles(ms: Sequence[float]) -> tuple[float, float, float]:
    """``(q1, median, q3)`` of samples (inclusive method; one sample is its own quartiles)."""
    if len(ms) == 1:
        return ms[0], ms[0], ms[0]
    q1, med, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    return q1, med, q3


def largest(values: Sequence[Any]) -> float | None:
    """The largest finite positive value, or None."""
    found = [float(v) for v in values if v is not None and math.isfinite(float(v)) and float(v) > 0]
    return max(found) if found else None


def probe_rate(probe_ms: Sequence[float], work: float | None) -> float | None:
    """The machine probe's best rate (its work per second at its fastest sample): FLOP/s for a
    matrix product, bytes/s for a memory sweep. A peak is a best case, so the minimum time."""
    if not probe_ms or not work:
        return None
    fastest = min(probe_ms)
    return work / (fastest / 1e3) if fastest > 0 else None


def probe_ms_per_unit(record: dict[str, Any]) -> float | None:
    """The machine probe timed beside a pair: its median milliseconds per unit of its work, which
    compares across probes of other sizes; None where the record carries no probe or no work."""
    ms, work = record.get("machine_probe_ms"), record.get("machine_probe_work")
    if not isinstance(ms, list) or not ms or not isinstance(work, int | float) or not math.isfinite(work) or work <= 0:
        return None
    return statistics.median(ms) / float(work)


def calibration_for(calibration: Sequence[dict[str, Any]], case: dict[str, Any], host: str = "") -> dict[str, Any]:
    """The run's calibration entry for a case's device, dtype and requested threads, preferring the
    entry measured on ``host`` (a merged or Ray run holds several hosts')."""
    key = (case.get("device"), case.get("dtype"), case.get("threads"))
    found = [c for c in calibration if (c.get("device"), c.get("dtype"), c.get("requested_threads")) == key]
    mine = [c for c in found if not host or c.get("host", host) == host]
    return (mine or found or [{}])[0]


def timing(samples_ms: Sequence[float], baseline_ms: Sequence[float], ok: bool) -> dict[str, Any]:
    """The median, quartiles and minimum of the samples, and the speedup (the baseline's median
    over the implementation's, both from one stretch of time; only for an ``ok`` record: a wrong
    answer's time is no evidence of speed)."""
    if not samples_ms:
        return {}
    q1, median, q3 = quartiles(samples_ms)
    out: dict[str, Any] = {"time_ms": median, "time_q1_ms": q1, "time_q3_ms": q3, "time_min_ms": min(samples_ms)}
    if baseline_ms:
        out["baseline_time_ms"] = statistics.median(baseline_ms)
        out["speedup"] = out["baseline_time_ms"] / median if ok and median > 0 else None
    return out


def rates(
    *,
    time_ms: float | None,
    flops: float | None,
    bytes_moved: float | None,
    mode: str,
    batch: int,
    seq_len: int,
    calibration: dict[str, Any],
    probe: float | None,
) -> dict[str, Any]:
    """FLOP and byte rates and the ceilings they are set against: the calibration's, or the probe
    timed beside the case where that is higher (a matrix product for compute-bound modes, a
    memory sweep for memory-bound ones)."""
    seconds = (time_ms or math.nan) / 1e3
    memory_bound = MODES[mode].memory_bound if mode in MODES else False
    out: dict[str, Any] = {}
    if flops is not None:
        out["gflops"] = flops / seconds / 1e9
        peak = largest([calibration.get("gflops")] + ([] if memory_bound or probe is None else [probe / 1e9]))
        out["peak_gflops"] = peak
        out["peak_fraction"] = out["gflops"] / peak if peak else None
    if memory_bound:
        out["tokens_per_s"] = batch * seq_len / seconds
    if bytes_moved is not None:
        out["gbps"] = bytes_moved / seconds / 1e9
        peak = largest([calibration.get("gbps")] + ([probe / 1e9] if memory_bound and probe else []))
        out["peak_gbps"] = peak
        out["bandwidth_fraction"] = out["gbps"] / peak if peak else None
    return out


def derive(record: dict[str, Any], calibration: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every figure of ``record`` re-derived from its raw samples, work and the run's calibration
    (a copy; a record with no samples is returned as it is)."""
    samples = [float(x) for x in record.get("samples_ms") or []]
    if not samples:
        return dict(record)
    out = dict(record)
    ok = record.get("status") == Status.OK
    out.update(timing(samples, [float(x) for x in record.get("baseline_samples_ms") or []], ok))
    if not ok:
        out["speedup"] = None
    probe = probe_rate([float(x) for x in record.get("machine_probe_ms") or []], record.get("machine_probe_work"))
    cal = calibration_for(calibration, record, str(record.get("host") or ""))
    out.update(
        rates(
            time_ms=out["time_ms"],
            flops=record.get("flops"),
            bytes_moved=record.get("bytes"),
            mode=str(record.get("mode", FORWARD.name)),
            batch=int(record.get("batch") or 1),
            seq_len=int(record.get("seq_len") or 1),
            calibration=cal,
            probe=probe,
        )
    )
    return out
