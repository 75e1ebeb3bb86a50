"""The ratios a suite declares (:mod:`attnbench.ratios`), evaluated on a run's records: each
figure with its spread, and whether the declared bound holds in every case it covers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from attnbench.case import CASE_KEYS
from attnbench.ratios import Ratio
from attnbench.report.fit import fit_slope


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


def evaluate(ratios: list[Ratio], records: pd.DataFrame) -> list[Outcome]:
    """Every ratio on the records of each machine (``records``: the report's frame, one row per
    record with the case fields, ``impl``, ``status``, times, samples and ``machine``)."""
    out: list[Outcome] = []
    if not len(records):
        return [Outcome(r, "", [], []) for r in ratios]
    for machine, mine in records.groupby("machine", sort=False):
        for ratio in ratios:
            if ratio.metric == "slope":
                out.append(_slopes(ratio, str(machine), mine))
            else:
                out.append(_pairs(ratio, str(machine), mine))
    return out


def _matches(frame: pd.DataFrame, where: dict[str, list[Any]]) -> pd.Series:
    keep = pd.Series(True, index=frame.index)
    for key, values in where.items():
        keep &= frame[key].isin(values)
    return keep


def _case_words(row: dict[str, Any], keys: list[str]) -> str:
    return " ".join(f"{k}={row[k]}" for k in keys)


def _pairs(ratio: Ratio, machine: str, frame: pd.DataFrame) -> Outcome:
    mine = frame[(frame["impl"] == ratio.impl) & _matches(frame, ratio.where)]
    peers = frame[frame["impl"] == ratio.peer]
    keys = [k for k in CASE_KEYS if k in frame]
    shown = [k for k in keys if frame[k].astype(str).nunique() > 1] or ["seq_len"]
    figures, missing = [], []
    for row in mine.to_dict("records"):
        words = _case_words(row, shown)
        if row["status"] != "ok":
            missing.append(f"{words}: {ratio.impl} {row['status']}")
            continue
        target = {**{k: row[k] for k in keys}, **ratio.peer_case}
        hit = peers[np.logical_and.reduce([peers[k] == v for k, v in target.items()])]
        if not len(hit):
            missing.append(f"{words}: no {ratio.peer} record on its case")
            continue
        peer = hit.iloc[0].to_dict()
        if peer["status"] != "ok":
            missing.append(f"{words}: {ratio.peer} {peer['status']}")
            continue
        figure = _memory(row, peer) if ratio.metric == "memory" else _speed(ratio, row, peer)
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


def _speed(ratio: Ratio, row: dict[str, Any], peer: dict[str, Any]) -> tuple[float, float, float, str] | None:
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


def _memory(row: dict[str, Any], peer: dict[str, Any]) -> tuple[float, float, float, str] | None:
    mine, theirs = row.get("peak_mem_bytes"), peer.get("peak_mem_bytes")
    if mine is None or theirs is None or not (float(theirs) > 0) or math.isnan(float(mine)):
        return None
    value = float(mine) / float(theirs)
    return value, value, value, f"{float(mine) / 2**20:.0f} MiB ÷ {float(theirs) / 2**20:.0f} MiB"


def _slopes(ratio: Ratio, machine: str, frame: pd.DataFrame) -> Outcome:
    mine = frame[(frame["impl"] == ratio.impl) & _matches(frame, ratio.where)]
    keys = [k for k in CASE_KEYS if k in frame and k not in ("seq_len", "kv_len")]
    shown = [k for k in keys if frame[k].astype(str).nunique() > 1]
    figures, missing = [], []
    if not len(mine):
        return Outcome(ratio, machine, [], [])
    for _, group in mine.groupby(keys, sort=False, dropna=False):
        first = group.iloc[0].to_dict()
        words = _case_words(first, shown) if shown else "all"
        failed = group[group["status"] != "ok"]
        for row in failed.to_dict("records"):
            missing.append(f"{words} N={row['seq_len']}: {row['status']}")
        ok = group[group["status"] == "ok"]
        fit = fit_slope(ok["seq_len"].astype(float).tolist(), ok["time_ms"].astype(float).tolist())
        if fit is None:
            missing.append(f"{words}: {ok['seq_len'].nunique()} lengths measured, a fitted slope needs 3")
            continue
        lengths = sorted(int(n) for n in ok["seq_len"])
        note = f"N {lengths[0]}–{lengths[-1]}, {len(lengths)} lengths, R² {fit.r2:.3f}"
        figures.append(Figure(words, fit.slope, fit.ci_low, fit.ci_high, ratio.holds(fit.slope), note))
    return Outcome(ratio, machine, figures, missing)
