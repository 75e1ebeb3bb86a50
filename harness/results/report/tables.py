"""The report's tables as DataFrames: summary, machines, status matrix, timings, accuracy, machines side by side.

Every table is written to ``tables/NAME.csv`` with raw numbers; the templates format them.
Speedups and throughputs come from ``ok`` records only: an ``inaccurate`` record computed the
wrong answer, and its time is no evidence of anything.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from attnbench.results.report.data import (
    CROSS_MACHINE_KEYS,
    ReportData,
    case_order,
    extreme,
    group_order,
    impl_order,
    records_of,
    suite_of,
)
from attnbench.case.status import Status, STATUSES

TIMING_COLUMNS = [
    "host",
    "impl",
    "group",
    "length",
    "case",
    "time_ms",
    "time_q1_ms",
    "time_q3_ms",
    "unstable",
    "speedup",
    "gflops",
    "peak_fraction",
    "gbps",
    "bandwidth_fraction",
    "peak_mem_bytes",
]
ACCURACY_COLUMNS = [
    "host",
    "impl",
    "case",
    "status",
    "exact",
    "max_abs_err",
    "rel_err",
    "accuracy_bound",
    "accuracy_rows",
    "checks",
    "check_note",
    "full_max_abs_err",
    "full_rel_err",
    "uniform_rel_err",
    "own_reference_differs",
]


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
    per_unit = []
    for row in records_of(good):
        ms, work = row.get("machine_probe_ms"), row.get("machine_probe_work")
        if isinstance(ms, list) and ms and isinstance(work, int | float) and work == work and work > 0:
            per_unit.append(statistics.median(ms) / float(work))
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


def machines(data: ReportData) -> pd.DataFrame:
    """One row per run: machine, software, suite and the measured matrix-multiply peaks."""
    rows = []
    for run in data.runs:
        info = run.info
        mach = info.get("machine") or {}
        vers = info.get("versions") or {}
        suite = suite_of(info)
        cal = info.get("calibration") or []
        peaks = "; ".join(
            f"{c.get('device')} {c.get('dtype')} {c.get('threads')}T: {float(c['gflops']):.1f} GFLOP/s"
            + (f" (measured {c['reused']}, reused)" if c.get("reused") else "")
            for c in cal
            if c.get("gflops")
        )
        mem = mach.get("memory_bytes")
        rows.append(
            {
                "machine": run.label,
                "source": str(
                    info.get("source") or ("generated, not measured" if info.get("generated") else "measured")
                ),
                "folder": str(run.path),
                "hostname": mach.get("hostname", ""),
                "os": mach.get("os", ""),
                "cpu": mach.get("cpu", ""),
                "cores": mach.get("cores"),
                "memory": f"{mem / 2**30:.1f} GiB" if mem else "",
                "gpu": mach.get("gpu") or "none",
                "driver": mach.get("driver") or "",
                "cuda": mach.get("cuda") or "",
                "python": vers.get("python", ""),
                "torch": vers.get("torch", ""),
                "numpy": vers.get("numpy", ""),
                "xformers": vers.get("xformers") or "not installed",
                "suite": suite.get("name", ""),
                "baseline": suite.get("baseline", ""),
                "attnbench": info.get("attnbench_version", ""),
                "commit": info.get("git_commit") or "",
                "started": info.get("started", ""),
                "ended": info.get("ended") or "(unfinished)",
                "matmul_peak": peaks or "not measured",
                "records": len(run.records),
            }
        )
    return pd.DataFrame(rows)


def status_matrix(data: ReportData, baseline: str = "") -> dict[str, dict[str, Any]]:
    """Per host: the case columns and, per implementation, one cell (status, reason) per case."""
    out: dict[str, dict[str, Any]] = {}
    for host, sub in data.records.groupby("host", sort=False):
        cases = case_order(sub)
        cells = {(r["impl"], r["case"]): r for r in records_of(sub)}
        rows = []
        for impl in impl_order(sub, baseline):
            row_cells = []
            for case in cases:
                rec = cells.get((impl, case))
                row_cells.append(None if rec is None else {"status": rec["status"], "reason": rec["reason"] or ""})
            rows.append({"impl": impl, "cells": row_cells})
        counts = sub["status"].value_counts()
        out[str(host)] = {
            "cases": cases,
            "rows": rows,
            "counts": {s: int(counts.get(s, 0)) for s in STATUSES if counts.get(s, 0)},
        }
    return out


def status_csv(data: ReportData) -> pd.DataFrame:
    if not len(data.records):
        return pd.DataFrame()
    return data.records.pivot_table(index=["host", "impl"], columns="case", values="status", aggfunc="first")


def failures(data: ReportData, baseline: str = "") -> pd.DataFrame:
    """Every distinct (implementation, status, reason) that is not ok, with the cases it ended so."""
    bad = data.records[data.records["status"] != Status.OK].fillna({"reason": ""})
    order = {name: i for i, name in enumerate(impl_order(data.records, baseline))}
    rows = []
    bad = bad.fillna({"step": ""})
    for (host, impl, status, step, reason), sub in bad.groupby(
        ["host", "impl", "status", "step", "reason"], sort=False
    ):
        cases = case_order(sub)
        rows.append(
            {
                "host": host,
                "impl": impl,
                "status": status,
                "step": step,
                "reason": reason,
                "count": len(cases),
                "cases": ", ".join(cases),
                "_order": (order.get(str(impl), 0), str(host)),
            }
        )
    if not rows:
        return pd.DataFrame(columns=["host", "impl", "status", "step", "reason", "count", "cases"])
    out = pd.DataFrame(rows)
    out = out.iloc[sorted(range(len(out)), key=lambda i: out["_order"].iloc[i])]
    return out.drop(columns=["_order"]).reset_index(drop=True)


def timings(data: ReportData) -> pd.DataFrame:
    ok = data.ok.sort_values(["host", "group", "impl", "x"], kind="stable")
    return ok[TIMING_COLUMNS].reset_index(drop=True)


def accuracy(data: ReportData) -> pd.DataFrame:
    """Error against each implementation's reference, and against full attention for approximations
    (records whose accuracy could not be checked included, with no figures)."""
    rec = data.records
    out = rec[rec["status"].isin([Status.OK, Status.INACCURATE, Status.UNCHECKED])].copy()
    out["checks"] = [" ".join(c) if isinstance(c, list) else str(c or "") for c in out["checks"]]
    return out.sort_values(["host", "impl", "group", "x"], kind="stable")[ACCURACY_COLUMNS].reset_index(drop=True)


def check_notes(data: ReportData) -> pd.DataFrame:
    """Each distinct note about a check that did not run, or an own reference() that differs,
    with the cases it concerns."""
    rec = data.records[data.records["check_note"].fillna("").astype(str) != ""]
    rows = [
        {"host": host, "impl": impl, "note": note, "cases": ", ".join(case_order(sub))}
        for (host, impl, note), sub in rec.groupby(["host", "impl", "check_note"], sort=False)
    ]
    return pd.DataFrame(rows, columns=["host", "impl", "note", "cases"])


def cross_machine(data: ReportData) -> pd.DataFrame:
    """Median time of each (implementation, case) on every machine that ran it, and the ratio to the first."""
    if len(data.runs) < 2:
        return pd.DataFrame()
    ok = data.ok
    keys = ["impl", *CROSS_MACHINE_KEYS]
    labels = [run.label for run in data.runs]
    wide = ok.pivot_table(index=keys, columns="machine", values="time_ms", aggfunc="median")
    wide = wide[[m for m in labels if m in wide.columns]].dropna(thresh=2)
    if wide.empty:
        return pd.DataFrame()
    first = wide.columns[0]
    table = wide.reset_index()
    cases = ok.drop_duplicates(keys).set_index(keys)
    index = [tuple(r) for r in table[keys].itertuples(index=False)]
    for i, col in enumerate(("group", "length", "x"), start=1):
        table.insert(i, col, [cases.at[k, col] for k in index])
    for m in wide.columns[1:]:
        table[f"{m} / {first}"] = (wide[m] / wide[first]).to_numpy()
    table["fastest machine"] = wide.idxmin(axis=1).to_numpy()
    table = table.drop(columns=list(CROSS_MACHINE_KEYS)).sort_values(["group", "impl", "x"], kind="stable")
    return table.drop(columns=["x"]).reset_index(drop=True)


def records_csv(data: ReportData) -> pd.DataFrame:
    """All records, lists of samples joined by spaces."""
    out = data.records.copy()
    for col in ("samples_ms", "baseline_samples_ms"):
        out[col] = [" ".join(f"{x:g}" for x in v) if isinstance(v, list) else "" for v in out[col]]
    return out


def write_csvs(tables: dict[str, pd.DataFrame], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in tables.items():
        path = folder / f"{name}.csv"
        frame.to_csv(path, index=isinstance(frame.index, pd.MultiIndex) or frame.index.name is not None)
        written.append(path)
    return written


def accuracy_summary(data: ReportData) -> pd.DataFrame:
    """Per host and implementation: the worst error against its reference over the cases it ran,
    and the range of its distance from full attention (approximations)."""
    acc = accuracy(data)
    rows = []
    for (host, impl), sub in acc.groupby(["host", "impl"], sort=False):
        worst = extreme(sub, "max_abs_err", largest=True) if sub["max_abs_err"].notna().any() else sub.iloc[0]
        full = sub["full_rel_err"].astype(float).dropna()
        uniform = sub["uniform_rel_err"].astype(float).dropna()
        checked = sub[sub["checks"] != ""]
        rows.append(
            {
                "host": host,
                "impl": impl,
                "exact": worst["exact"],
                "checked": len(checked),
                Status.UNCHECKED: len(sub) - len(checked),
                "what": ", ".join(dict.fromkeys(w for c in checked["checks"] for w in c.split())),
                Status.INACCURATE: int((sub["status"] == Status.INACCURATE).sum()),
                "worst_max_abs_err": worst["max_abs_err"],
                "worst_rel_err": sub["rel_err"].astype(float).max(),
                "bound": worst["accuracy_bound"],
                "worst_case": worst["case"],
                "full_rel_err_min": full.min() if len(full) else None,
                "full_rel_err_max": full.max() if len(full) else None,
                "uniform_rel_err_min": uniform.min() if len(uniform) else None,
                "uniform_rel_err_max": uniform.max() if len(uniform) else None,
                "own_reference_differs": bool((sub["own_reference_differs"] == True).any()),  # noqa: E712
            }
        )
    return pd.DataFrame(rows)
