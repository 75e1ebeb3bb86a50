"""The ratios a suite declares (:mod:`attnbench.sweep.ratios`), evaluated on a run's records: each
figure with its spread, and whether the declared bound holds in every case it covers.

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attnbench.case.keys import CASE_KEYS, varying_label
from attnbench.case.status import Status
from attnbench.results.report.data import ReportData
from attnbench.results.report.fit import chained_fit, fit_slope
from attnbench.sweep.pairs import by_key, case_of, chain, length_steps, pair_key
from attnbench.sweep.ratios import Ratio, RatioError, parse_ratios


def _row(row: pd.Series | dict[Any, Any]) -> dict[str, Any]:
    """A record's row as a dict keyed by column name."""
    return {str(key): value for key, value in row.items()}


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A frame's rows as dicts keyed by column name."""
    return [_row(row) for row in frame.to_dict("records")]


@dataclass
class Figure:
    """One evaluated figure of a ratio: a case (or, for a slope, a group of lengths)."""

    at: str  # the case or group, in words
    value: float
    low: float
    high: float
    holds: bool | None
    note: str = ""


@dataclass
class Outcome:
    """A ratio evaluated on one machine's records."""

    ratio: Ratio
    machine: str
    figures: list[Figure]
    missing: list[str]  # cases matched whose figure could not be formed, and why
    peaks: str = ""  # for a ratio across dtypes: the machine's measured peak in each

    @property
    def verdict(self) -> str:
        """``met``, ``not met``, ``no data`` or ``shown`` (no bound)."""
        if not self.figures:
            return "no data"
        if self.ratio.bound() == "":
            return "shown"
        met = all(f.holds for f in self.figures) and not self.missing
        return "met" if met else "not met"

    def span(self) -> tuple[float, float]:
        values = [f.value for f in self.figures]
        return (min(values), max(values)) if values else (math.nan, math.nan)


def evaluate(ratios: list[Ratio], records: pd.DataFrame, paired: list[dict[str, Any]] | None = None) -> list[Outcome]:
    """Every ratio on the records of each machine (``records``: the report's frame, one row per
    record with the case fields, ``impl``, ``status``, times, samples and ``machine``), a speed
    from its ``paired`` timings where the run has them (:mod:`attnbench.sweep.pairs`)."""
    found, steps = by_key(paired or []), length_steps(paired or [])
    out: list[Outcome] = []
    if not len(records):
        return [Outcome(r, "", [], []) for r in ratios]
    for machine, mine in records.groupby("machine", sort=False):
        for ratio in ratios:
            if ratio.metric == "slope":
                out.append(_slopes(ratio, str(machine), mine, steps))
            elif ratio.metric == "bandwidth":
                out.append(_bandwidths(ratio, str(machine), mine))
            else:
                out.append(_pairs(ratio, str(machine), mine, found))
    return out


def _matches(frame: pd.DataFrame, where: dict[str, list[Any]]) -> pd.Series:
    keep = pd.Series(True, index=frame.index)
    for key, values in where.items():
        keep &= frame[key].isin(values)
    return keep


def _varying(frame: pd.DataFrame) -> list[str]:
    return [k for k in CASE_KEYS if k in frame and frame[k].astype(str).nunique() > 1]


def _group_words(row: dict[str, Any], varying: list[str]) -> str:
    """A group of lengths named by the fields that vary among the matched records (no length)."""
    words = varying_label(row, [k for k in varying if k not in ("seq_len", "kv_len")]).split(" ", 1)
    return words[1] if len(words) > 1 else "every case matched"


def _pairs(ratio: Ratio, machine: str, frame: pd.DataFrame, paired: dict[tuple[Any, ...], dict[str, Any]]) -> Outcome:
    mine = frame[(frame["impl"] == ratio.impl) & _matches(frame, ratio.where)]
    peers = frame[frame["impl"] == ratio.peer]
    keys, shown = [k for k in CASE_KEYS if k in frame], _varying(mine)
    figures, missing = [], []
    for length in sorted(set(ratio.where.get("seq_len", [])) - set(mine["seq_len"])):
        missing.append(f"N={length}: no {ratio.impl} record")
    for row in _records(mine):
        words = varying_label(row, shown)
        if row["status"] != Status.OK:
            missing.append(f"{words}: {ratio.impl} {row['status']}")
            continue
        target = {**{k: row[k] for k in keys}, **ratio.peer_case}
        hit = peers[np.logical_and.reduce([peers[k] == v for k, v in target.items()])]
        if not len(hit):
            missing.append(f"{words}: no {ratio.peer} record on its case")
            continue
        peer = _row(hit.iloc[0])
        if peer["status"] != Status.OK:
            missing.append(f"{words}: {ratio.peer} {peer['status']}")
            continue
        both = paired.get(pair_key(ratio.name, ratio.impl, case_of(row)))
        figure = _memory(row, peer) if ratio.metric == "memory" else _speed(ratio, row, peer, both)
        if figure is None:
            missing.append(f"{words}: no {ratio.metric} measured")
            continue
        value, low, high, note = figure
        figures.append(Figure(words, value, low, high, ratio.holds(value), note))
    return Outcome(ratio, machine, figures, missing)


def _quartiles(samples: Any, median: Any) -> tuple[float, float, float]:
    values = [float(x) for x in samples] if isinstance(samples, list | np.ndarray) and len(samples) else []
    if not values:
        m = float(median)
        return m, m, m
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(q2), float(q3)


def _speed(
    ratio: Ratio, row: dict[str, Any], peer: dict[str, Any], paired: dict[str, Any] | None = None
) -> tuple[float, float, float, str] | None:
    if paired is not None:  # both timed alternately after the sweep
        i1, i2, i3 = _quartiles(paired["impl_ms"], None)
        p1, p2, p3 = _quartiles(paired["peer_ms"], None)
        if all(math.isfinite(x) and x > 0 for x in (i1, i2, i3, p1, p2, p3)):
            return p2 / i2, p1 / i3, p3 / i1, "paired"
    i1, i2, i3 = _quartiles(row.get("samples_ms"), row.get("time_ms"))
    beside = str(row.get("baseline") or "") == ratio.peer and ratio.peer != ratio.impl
    interleaved = not ratio.peer_case and beside and row.get("baseline_samples_ms")
    if interleaved:
        p1, p2, p3 = _quartiles(row["baseline_samples_ms"], row.get("baseline_time_ms"))
        note = "interleaved"
    else:
        p1, p2, p3 = _quartiles(peer.get("samples_ms"), peer.get("time_ms"))
        note = ""
    if not all(math.isfinite(x) and x > 0 for x in (i1, i2, i3, p1, p2, p3)):
        return None
    return p2 / i2, p1 / i3, p3 / i1, note


def _bandwidths(ratio: Ratio, machine: str, frame: pd.DataFrame) -> Outcome:
    """Each matched record's fraction of the machine's memory bandwidth, its spread from the time's
    quartiles (bytes over Q3 to bytes over Q1)."""
    mine = frame[(frame["impl"] == ratio.impl) & _matches(frame, ratio.where)]
    shown = _varying(mine)
    figures, missing = [], []
    for length in sorted(set(ratio.where.get("kv_len", [])) - set(mine["kv_len"])):
        missing.append(f"{length} cached tokens: no {ratio.impl} record")
    for row in _records(mine):
        words = varying_label(row, shown)
        fraction = row.get("bandwidth_fraction")
        if row["status"] != Status.OK:
            missing.append(f"{words}: {ratio.impl} {row['status']}")
            continue
        if not isinstance(fraction, int | float) or not math.isfinite(float(fraction)) or fraction <= 0:
            missing.append(f"{words}: no bandwidth measured")
            continue
        q1, q2, q3 = _quartiles(row.get("samples_ms"), row.get("time_ms"))
        median = float(row["time_ms"])
        value = float(fraction)
        low, high = (value * median / q3, value * median / q1) if q1 > 0 and q3 > 0 else (value, value)
        note = f"{float(row['gbps']):.3g} GB/s of {float(row['peak_gbps']):.3g}" if row.get("peak_gbps") else ""
        figures.append(Figure(words, value, low, high, ratio.holds(value), note))
    return Outcome(ratio, machine, figures, missing)


def _memory(row: dict[str, Any], peer: dict[str, Any]) -> tuple[float, float, float, str] | None:
    mine, theirs = row.get("peak_mem_bytes"), peer.get("peak_mem_bytes")
    if mine is None or theirs is None or not (float(theirs) > 0) or math.isnan(float(mine)):
        return None
    value = float(mine) / float(theirs)
    return value, value, value, f"{float(mine) / 2**20:.0f} MiB ÷ {float(theirs) / 2**20:.0f} MiB"


def _slopes(
    ratio: Ratio, machine: str, frame: pd.DataFrame, paired: dict[tuple[Any, ...], dict[str, Any]] | None = None
) -> Outcome:
    """A fitted slope per group of lengths (the other case fields, and ``kv_rel``, held equal): to
    the times chained through the paired timings of neighbouring lengths where every step has
    them (noted "paired"; :func:`~attnbench.results.report.fit.chained_fit`), else to the records' times.
    ``paired``: the run's timed steps by what was timed (:func:`attnbench.sweep.pairs.length_steps`)."""
    mine = frame[(frame["impl"] == ratio.impl) & _matches(frame, ratio.where)]
    keys = [k for k in (*CASE_KEYS, "kv_rel") if k in frame and k not in ("seq_len", "kv_len")]
    shown = _varying(mine)
    figures, missing = [], []
    if not len(mine):
        return Outcome(ratio, machine, [], [])
    for length in sorted(set(ratio.where.get("seq_len", [])) - set(mine["seq_len"])):
        missing.append(f"N={length}: no {ratio.impl} record")
    for _, group in mine.groupby(keys, sort=False, dropna=False):
        first = _row(group.iloc[0])
        words = _group_words(first, shown)
        failed = group[group["status"] != Status.OK]
        for row in _records(failed):
            missing.append(f"{words} N={row['seq_len']}: {row['status']}")
        ok = group[group["status"] == Status.OK].sort_values(["seq_len", "kv_len"])
        lengths = [int(n) for n in ok["seq_len"]]
        timed = chain([case_of(r) for r in _records(ok)], ratio.impl, paired or {}) if len(ok) else None
        fit = chained_fit(lengths, timed) if timed is not None else None
        how = "paired, " if fit is not None else ""
        fit = fit or fit_slope(lengths, ok["time_ms"].astype(float).tolist())
        if fit is None:
            missing.append(f"{words}: {ok['seq_len'].nunique()} lengths measured, a fitted slope needs 3")
            continue
        note = f"{how}N {lengths[0]}–{lengths[-1]}, {len(lengths)} lengths, R² {fit.r2:.3f}"
        figures.append(Figure(words, fit.slope, fit.ci_low, fit.ci_high, ratio.holds(fit.slope), note))
    return Outcome(ratio, machine, figures, missing)


def declared(data: ReportData) -> list[Outcome]:
    """Every run's declared ratios (from the suite text it recorded) on that run's records."""
    out: list[Outcome] = []
    for run in data.runs:
        text = (run.info.get("suite") or {}).get("text")
        if not text:
            continue
        try:
            ratios = parse_ratios(tomllib.loads(text).get("ratio"), run.label)
        except (tomllib.TOMLDecodeError, RatioError):
            continue  # a run's suite was validated when it ran; a later schema change skips it
        mine = data.records[data.records["machine"] == run.label]
        for outcome in evaluate(ratios, mine, run.pairs):
            outcome.machine = run.label
            outcome.peaks = _peaks(outcome.ratio, mine, run.info.get("calibration") or [])
            out.append(outcome)
    return out


def _peaks(ratio: Ratio, records: pd.DataFrame, calibration: list[dict[str, Any]]) -> str:
    """For a ratio across dtypes, the machine's measured matrix-product rate in each (the best
    over the calibration's sizes, of products in that very dtype): what bounds the ratio."""
    if "dtype" not in ratio.peer_case or not len(records):
        return ""
    mine_dtypes = [str(d) for d in ratio.where.get("dtype", [])]
    theirs = str(ratio.peer_case["dtype"])
    rates: dict[str, float] = {}
    for cal in calibration:
        for dtype, by_size in (cal.get("rates") or {}).items():
            best = max((float(r) for r in by_size.values()), default=0.0)
            if cal.get("device") == "cpu" and best > rates.get(dtype, 0.0):
                rates[dtype] = best
    if len(mine_dtypes) != 1 or mine_dtypes[0] not in rates or theirs not in rates:
        return ""
    mine = rates[mine_dtypes[0]]
    return (
        f"this machine's measured matrix-product rate: {mine:.3g} GFLOP/s in {mine_dtypes[0]},"
        f" {rates[theirs]:.3g} in {theirs} ({mine / rates[theirs]:.3g}×)"
    )


def table(outcomes: list[Outcome]) -> pd.DataFrame:
    """One row per figure (and per figure that could not be formed), for ratios.csv."""
    rows: list[dict[str, Any]] = []
    for o in outcomes:
        base = {"ratio": o.ratio.name, "machine": o.machine, "metric": o.ratio.metric, "bound": o.ratio.bound()}
        for f in o.figures:
            rows.append({**base, "case": f.at, "value": f.value, "low": f.low, "high": f.high, "holds": f.holds,
                         "note": f.note, "verdict": o.verdict})  # fmt: skip
        if not o.figures and not o.missing:
            rows.append({**base, "case": "no record matched", "value": None, "low": None, "high": None,
                         "holds": None, "note": "not measured", "verdict": o.verdict})  # fmt: skip
        for m in o.missing:
            rows.append({**base, "case": m, "value": None, "low": None, "high": None, "holds": False,
                         "note": "not measured", "verdict": o.verdict})  # fmt: skip
    return pd.DataFrame(rows)


def context(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """What the templates show: each ratio, its verdict, its span and every figure."""
    out = []
    for o in outcomes:
        low, high = o.span()
        out.append(
            {
                "name": o.ratio.name, "machine": o.machine, "metric": o.ratio.metric, "bound": o.ratio.bound(),
                "verdict": o.verdict, "low": low, "high": high, "peaks": o.peaks,
                "figures": [vars(f) for f in o.figures], "missing": o.missing,
            }
        )  # fmt: skip
    return out


def verdict_lines(path: Path) -> list[str]:
    """A count of a report's declared ratios by verdict (from its ``tables/ratios.csv``), then one
    line for each bound not shown met: what the command prints after the report."""
    if not path.is_file():
        return []
    table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    verdicts = table.drop_duplicates(["ratio", "machine"])
    counts = verdicts["verdict"].value_counts()
    order = ("met", "not met", "no data", "shown")
    lines = ["ratios: " + ", ".join(f"{int(counts[v])} {v}" for v in order if v in counts)]
    bounded = verdicts["bound"].astype(str).str.len() > 0
    for row in verdicts[bounded & verdicts["verdict"].isin(["not met", "no data"])].to_dict("records"):
        mine = table[(table["ratio"] == row["ratio"]) & (table["machine"] == row["machine"])]
        values = mine["value"].dropna()
        span = f"measured {values.min():.3g}–{values.max():.3g}" if len(values) else "no figure"
        gaps = int(mine["value"].isna().sum())
        span += f"; {gaps} case(s) not measured" if gaps else ""
        lines.append(f"  {row['verdict']}: {row['ratio']} ({row['bound']}; {span})")
    return lines
