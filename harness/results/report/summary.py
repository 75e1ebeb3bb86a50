"""The report's summary table: per case, the fastest exact implementation, the specialist for the
case's pattern, the lowest memory and the fastest approximation, ranked by time relative to the
baseline each was interleaved with.

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

import statistics
from typing import Any

import pandas as pd

from attnbench.case.status import Status
from attnbench.measure.figures import probe_ms_per_unit
from attnbench.results.report.data import ReportData, extreme, group_order, records_of


#: Baseline medians across one case's pairs that differ by more than this are reported.
BASELINE_SPREAD = 0.10


def summary(data: ReportData) -> pd.DataFrame:
    """Per host and case: the fastest exact implementation, the fastest implementation
    specialised for the case's pattern (one that computes only windows or block layouts), the
    fastest approximation (with its distance from softmax attention and uniform attention's), the
    exact implementation with the lowest memory.

    "Fastest" holds on a busy machine: each implementation was timed interleaved with the
    baseline, so its time relative to that baseline does not depend on when it ran; that ratio
    times the baseline's median over the whole case (``comparable_ms``) ranks them. Where the
    baseline's own medians across the case's pairs differ by more than 10%, the row says so
    (``baseline_spread``) with how far the machine probe timed beside each pair moved meanwhile
    (``probe_spread``): measured on this project's two-core VMs, a neighbouring call changes the
    next one's time by at most 4-7% (SDPA after each implementation, round-robin in one process),
    while the machine's own speed drifts by 20-50% between pairs timed seconds apart, and the
    probe moves with it."""
    rows: list[dict[str, Any]] = []
    rank = {g: i for i, g in enumerate(group_order(data.records))}
    keyed = data.records.assign(_rank=data.records["group"].map(rank))
    for (host, _, group, _x), sub in keyed.groupby(["host", "_rank", "group", "x"], sort=True):
        good = comparable(sub[sub["status"] == Status.OK])
        exact = good[good["exact"] != False]  # noqa: E712 (None: not declared, counted as exact)
        row: dict[str, Any] = {
            "host": host,
            "group": group,
            "length": sub["length"].iloc[0],
            "case": sub["case"].iloc[0],
            "ran": len(good),
            "tried": len(sub),
            "baseline_ms": good.attrs.get("baseline_ms"),
            "baseline_spread": good.attrs.get("baseline_spread"),
            "probe_spread": good.attrs.get("probe_spread"),
            "ranked_by": good.attrs.get("ranked_by", "time"),
            "ranked_why": good.attrs.get("ranked_why", ""),
        }
        is_special = exact["impl"].map(lambda n: specialised(data, str(n))).astype(bool)
        general, special = exact[~is_special], exact[is_special]
        for prefix, frame in (("", general), ("special_", special)):
            ranked = frame.sort_values("comparable_ms", kind="stable")
            if len(ranked):
                best = ranked.iloc[0]
                row[f"{prefix}fastest"] = best["impl"]
                row[f"{prefix}time_ms"] = best["comparable_ms"]
                row[f"{prefix}speedup"] = best["speedup"]
                row[f"{prefix}runner_up"] = _runner_up(ranked)
        if len(general) and len(special):
            row["special_vs_fastest"] = float(row["time_ms"]) / float(row["special_time_ms"])
        mem = exact.dropna(subset=["peak_mem_bytes"])
        if len(mem):
            low = extreme(mem, "peak_mem_bytes")
            row.update(lowest_memory=low["impl"], memory_bytes=low["peak_mem_bytes"])
        approx = good[good["exact"] == False].sort_values("comparable_ms", kind="stable")  # noqa: E712
        if len(approx):
            fast = approx.iloc[0]
            row.update(
                approximation=fast["impl"],
                approx_time_ms=fast["comparable_ms"],
                approx_speedup=fast["speedup"],
                approx_distance=fast["full_rel_err"],
                uniform_distance=fast["uniform_rel_err"],
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


SUMMARY_COLUMNS = [
    "host", "group", "length", "case", "ran", "tried", "ranked_by", "ranked_why", "baseline_ms", "baseline_spread",
    "probe_spread",
    "fastest", "time_ms", "speedup", "runner_up",
    "special_fastest", "special_time_ms", "special_speedup", "special_runner_up", "special_vs_fastest",
    "lowest_memory", "memory_bytes",
    "approximation", "approx_time_ms", "approx_speedup", "approx_distance", "uniform_distance",
]  # fmt: skip


def comparable(good: pd.DataFrame) -> pd.DataFrame:
    """``good`` with ``comparable_ms``: each time relative to the baseline it was interleaved
    with, times the baseline's median over these pairs (the median time where there is no
    interleaved baseline); ``attrs`` say how it was ranked and how much the baseline varied."""
    out = good.copy()
    if not len(out):
        out["comparable_ms"] = pd.Series(dtype=float)
        return out
    base = out["baseline_time_ms"].astype(float)
    own = out["time_ms"].astype(float)
    is_base = out["speedup"].astype(float) == 1.0
    base = base.where(base.notna() | ~is_base, own)  # the baseline's own record: its own time
    if len(out) and base.notna().all():
        reference = float(base.median())
        out["comparable_ms"] = own / base * reference
        out.attrs["ranked_by"] = "time relative to the interleaved baseline"
        out.attrs["baseline_ms"] = reference
        spread = (float(base.max()) - float(base.min())) / reference if reference > 0 else 0.0
        out.attrs["baseline_spread"] = spread if spread > BASELINE_SPREAD else None
        out.attrs["baseline_range"] = (float(base.min()), float(base.max()))
        out.attrs["probe_spread"] = _probe_spread(out) if spread > BASELINE_SPREAD else None
    else:
        out["comparable_ms"] = own
        out.attrs["ranked_by"] = "median time"
        out.attrs["ranked_why"] = _why_raw(out[base.isna()])
    return out


def _probe_spread(good: pd.DataFrame) -> float | None:
    """How far the machine probe timed beside each of a case's pairs moved across them (its median
    time per unit of work, (max − min) / median), or None without probes. A baseline that varied
    with the probe varied with the machine's speed between the pairs; one that varied while the
    probe held steady varied for another reason."""
    per_unit = [unit for row in records_of(good) if (unit := probe_ms_per_unit(row)) is not None]
    if len(per_unit) < 2:
        return None
    middle = statistics.median(per_unit)
    return (max(per_unit) - min(per_unit)) / middle if middle > 0 else None


def _why_raw(lacking: pd.DataFrame) -> str:
    """Why a case is ranked by raw medians: the records with no interleaved baseline, and why each has none."""
    parts = []
    for row in records_of(lacking):
        note = str(row.get("baseline_note") or "") if isinstance(row.get("baseline_note"), str) else ""
        parts.append(f"{row['impl']} has no interleaved baseline" + (f" ({note})" if note else ""))
    return "; ".join(parts)


def specialised(data: ReportData, name: str) -> bool:
    """An implementation that computes only windows or block layouts (it declares no full
    attention): the specialist a windowed or block-sparse case is built for."""
    computes = set((data.declarations.get(name) or {}).get("computes") or [])
    return bool(computes) and "full" not in computes and computes <= {"window", "block-sparse", "causal"}


def _runner_up(ranked: pd.DataFrame) -> str:
    if len(ranked) < 2:
        return ""
    best, second = ranked.iloc[0], ranked.iloc[1]
    factor = float(second["comparable_ms"]) / float(best["comparable_ms"])
    return f"{second['impl']} ({factor:.2f}× slower)"


