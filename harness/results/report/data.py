"""Loading result folders and shaping them for the report: labels, groups, declarations.

A *case group* is a set of cases that differ only in one length, ``x``: the sequence length N, or
the key/value length Nk where a fixed query length meets growing keys (decoding). Mode, dtype,
device, batch, heads, head dim and pattern are fixed. Plots draw one line per implementation (and
per machine) across a group's lengths; fits are made per group and machine.

The *host* of a record is its machine's label, with the thread count added where one machine
ran several (so that 2 and 8 threads on one box are drawn and fitted apart).

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from attnbench.case.keys import CASE_KEYS, GROUP_KEYS, group_label, varying_label
from attnbench.case.status import Status
from attnbench.results.read import load_results, load_run, read_pytest_benchmark
from attnbench.sweep.pairs import read_pairs

#: Case fields matched across machines (thread counts differ between machines by design).
CROSS_MACHINE_KEYS: tuple[str, ...] = tuple(k for k in CASE_KEYS if k != "threads")


@dataclass
class Run:
    """One result folder (or pytest-benchmark file)."""

    path: Path
    info: dict[str, Any]
    label: str
    records: pd.DataFrame
    pairs: list[dict[str, Any]] = field(default_factory=list)  # paired timings (attnbench.sweep.pairs)


@dataclass
class ReportData:
    """Every run given to the report, their records together, and what the implementations declare."""

    runs: list[Run]
    records: pd.DataFrame
    declarations: dict[str, dict[str, Any]] = field(default_factory=dict)
    varying: list[str] = field(default_factory=list)

    @property
    def machines(self) -> list[str]:
        return [r.label for r in self.runs]

    @property
    def ok(self) -> pd.DataFrame:
        """Records whose timings count: status ``ok`` only (never ``inaccurate``)."""
        return self.records[self.records["status"] == Status.OK]


def load_data(paths: list[Path]) -> ReportData:
    """Load every folder; give each run a unique machine label."""
    if not paths:
        raise ValueError("report: give at least one result folder")
    runs: list[Run] = []
    for path in paths:
        frame = load_results(path)
        info = read_pytest_benchmark(path)[1] if path.suffix == ".json" else load_run(path)
        base = str(frame["machine"].iloc[0]) if len(frame) else path.name
        runs.append(Run(path, info, base, frame, read_pairs(path) if path.is_dir() else []))
    _unique_labels(runs)
    for run in runs:
        run.records = run.records.assign(machine=run.label)
    records = pd.concat([r.records for r in runs], ignore_index=True) if runs else pd.DataFrame()
    records = shape(records)
    declarations: dict[str, dict[str, Any]] = {}
    for run in runs:
        for decl in run.info.get("implementations") or []:
            declarations.setdefault(str(decl.get("name")), decl)
    for run in runs:  # the baseline's own records: 1× by definition, in the cases it is the baseline of
        name = suite_of(run.info).get("baseline")
        if name and len(records):
            mine, keys = records["machine"] == run.label, [k for k in CASE_KEYS if k in records]
            based = records["baseline"] == name if "baseline" in records else pd.Series(False, index=records.index)
            beside = {tuple(r) for r in records.loc[mine & based, keys].astype(str).to_numpy()}
            in_case = pd.Series([tuple(r) in beside for r in records[keys].astype(str).to_numpy()], index=records.index)
            own = mine & (records["impl"] == name) & (records["status"] == Status.OK) & (in_case | based)
            records.loc[own & records["speedup"].isna(), "speedup"] = 1.0
    varying = [k for k in CASE_KEYS if k in records and records[k].astype(str).nunique() > 1]
    records["case"] = [varying_label(row, varying) for row in records_of(records)]
    return ReportData(runs, records, declarations, varying)


def records_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of ``frame`` as dicts keyed by column name."""
    return cast(list[dict[str, Any]], frame.to_dict("records"))


def extreme(frame: pd.DataFrame, column: str, largest: bool = False) -> pd.Series:
    """The row of ``frame`` with the smallest (or largest) value in ``column`` (NaNs ignored)."""
    values = frame[column].astype(float).to_numpy()
    return frame.iloc[int(np.nanargmax(values) if largest else np.nanargmin(values))]


def suite_of(info: dict[str, Any]) -> dict[str, Any]:
    """The suite a run was given, its ``[suite]`` table flattened in (``name``, ``baseline``, ...)."""
    suite = dict(info.get("suite") or {})
    inner = suite.pop("suite", None)
    return {**inner, **suite} if isinstance(inner, dict) else suite


def _unique_labels(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
    for run in runs:
        if seen[run.label] > 1:
            run.label = f"{run.label} ({run.path.name})"


def shape(records: pd.DataFrame) -> pd.DataFrame:
    """Add the ``kv_rel``, ``axis``, ``x``, ``length``, ``group`` and ``host`` columns, fill the speedup
    from the baseline time where missing, and clear speedups of any record that is not ok."""
    out = records.copy()
    if not len(out):
        for col in ("kv_rel", "axis", "x", "length", "group", "host", "case"):
            out[col] = pd.Series(dtype=object)
        return out
    _length_axis(out)
    out["group"] = [group_label(row) for row in records_of(out[list(GROUP_KEYS)])]
    several = out.groupby("machine")["threads"].transform("nunique") > 1
    out["host"] = [
        f"{m} T={t}" if s else str(m) for m, t, s in zip(out["machine"], out["threads"], several, strict=True)
    ]
    speed = out["speedup"].astype(float)
    derived = out["baseline_time_ms"].astype(float) / out["time_ms"].astype(float)
    speed = speed.where(speed.notna(), derived)
    out["speedup"] = speed.where(out["status"] == Status.OK)
    return out


def _length_axis(out: pd.DataFrame) -> None:
    """Which length a group sweeps. Self-attention and cross-attention with a fixed key length sweep
    the query length N (``kv_rel`` "self" or "Nk=…"); a fixed query length against growing keys
    (decoding with a KV cache) sweeps the key length Nk (``kv_rel`` "Nq=…")."""
    cross = out["kv_len"] != out["seq_len"]
    out["kv_rel"] = "self"
    out["axis"] = "seq_len"
    others = [k for k in GROUP_KEYS if k != "kv_rel"]
    for _, sub in out[cross].groupby(["machine", *others], sort=False, dropna=False):
        by_keys = sub["seq_len"].nunique() == 1 and sub["kv_len"].nunique() > 1
        out.loc[sub.index, "axis"] = "kv_len" if by_keys else "seq_len"
        out.loc[sub.index, "kv_rel"] = [
            f"Nq={q}" if by_keys else f"Nk={k}" for q, k in zip(sub["seq_len"], sub["kv_len"], strict=True)
        ]
    out["x"] = [int(row[axis]) for row, axis in zip(records_of(out), out["axis"], strict=True)]
    out["length"] = [f"{AXIS_SYMBOL[a]}={x}" for a, x in zip(out["axis"], out["x"], strict=True)]


#: How each swept length is written, and named on an axis.
AXIS_SYMBOL = {"seq_len": "N", "kv_len": "Nk"}
AXIS_NAME = {"seq_len": "sequence length N", "kv_len": "key/value length Nk"}


def calibration_peak(run: Run, device: str, dtype: str, threads: int | None = None) -> float | None:
    """The measured matrix-multiply peak (GFLOP/s) of a run for this device, dtype and (where
    given and recorded) thread count."""
    found = [
        c
        for c in run.info.get("calibration") or []
        if c.get("device") == device and c.get("dtype") == dtype and c.get("gflops")
    ]
    same = [c for c in found if threads is not None and threads in (c.get("requested_threads"), c.get("threads"))]
    return float((same or found)[0]["gflops"]) if (same or found) else None


def group_order(records: pd.DataFrame) -> list[str]:
    """Case groups, the largest sweep first (the main question of a suite), then by name."""
    if not len(records):
        return []
    sizes = records.groupby("group")["x"].nunique()
    return sorted(sizes.index, key=lambda g: (-int(sizes[g]), str(g)))


def case_order(records: pd.DataFrame) -> list[str]:
    """Case labels ordered by group (largest sweep first), then sequence length."""
    if not len(records):
        return []
    rank = {g: i for i, g in enumerate(group_order(records))}
    ordered = records.assign(_rank=records["group"].map(rank)).sort_values(["_rank", "x", "case"], kind="stable")
    return list(dict.fromkeys(ordered["case"]))


def impl_order(records: pd.DataFrame, baseline: str = "") -> list[str]:
    """Implementations: the baseline first, then the rest in order of first appearance."""
    names = list(dict.fromkeys(records["impl"].astype(str)))
    return sorted(names, key=lambda n: (n != baseline, names.index(n)))


def baseline_name(data: ReportData) -> str:
    for run in data.runs:
        name = suite_of(run.info).get("baseline")
        if name:
            return str(name)
    named = data.records["baseline"].dropna().astype(str)
    named = named[named != ""]
    return str(named.iloc[0]) if len(named) else ""
