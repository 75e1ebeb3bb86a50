"""The report's tables as DataFrames: summary, machines, status matrix, timings, accuracy, machines side by side.

Every table is written to ``tables/NAME.csv`` with raw numbers; the templates format them.
Speedups and throughputs come from ``ok`` records only: an ``inaccurate`` record computed the
wrong answer, and its time is no evidence of anything.

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from attnbench.case.keys import CASE_KEYS
from attnbench.case.status import STATUSES, Status
from attnbench.measure.profile import command_for
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
    out["profile"] = [command_for(r["impl"], {k: r[k] for k in CASE_KEYS if k in r}) for r in records_of(out)]
    return out


def profiles(data: ReportData) -> pd.DataFrame:
    """For each implementation, the ``attnbench profile`` command of its slowest ``ok`` pair (every
    pair's is in ``records.csv``)."""
    ok = data.ok
    if not len(ok):
        return pd.DataFrame(columns=["impl", "case", "time_ms", "command"])
    slowest = ok.sort_values("time_ms", ascending=False, kind="stable").drop_duplicates("impl")
    rows = [
        {"impl": r["impl"], "case": f"{r['group']} · {r['length']}", "time_ms": r["time_ms"], "command": command_for(r["impl"], r)}
        for r in records_of(slowest.sort_values("impl", kind="stable"))
    ]
    return pd.DataFrame(rows)


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
