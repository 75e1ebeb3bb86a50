"""Fitted scaling: the slope of log(time) and log(memory) against log(sequence length).

An implementation claims how its time and extra memory grow with N (``time_growth`` and
``memory_growth`` in its declaration, exponents of N). The fit is an ordinary least-squares line
through ``(log N, log y)`` over the sizes that ran (ok records); its 95% confidence interval is
``slope ± t(0.975, n−2)·stderr`` from the regression's standard error. Three sizes at least: with
two the line passes through both points and has no error estimate.

A measured slope more than :data:`FLAG_MARGIN` above the claim is flagged. Claims are exponents of
N with ``seq_len == kv_len == N``; a group that sweeps the key length alone (decoding) is fitted
but not held to them. Small sizes are often
dominated by fixed overheads, which pull the slope *down*; a slope well *above* the claim is the
surprise worth reporting.

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from attnbench.case.keys import GROUP_KEYS, group_label
from attnbench.case.status import Status
from attnbench.results.report.data import AXIS_SYMBOL, records_of
from attnbench.sweep.pairs import FLAG_MARGIN, case_of, chain, length_steps

MIN_POINTS = 3
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Fit:
    """``log y = intercept + slope · log N``, with the slope's confidence interval."""

    slope: float
    intercept: float
    stderr: float
    ci_low: float
    ci_high: float
    points: int
    r2: float

    def contains(self, value: float) -> bool:
        return self.ci_low <= value <= self.ci_high

    def describe(self) -> str:
        half = (self.ci_high - self.ci_low) / 2
        return f"{self.slope:.2f} ± {half:.2f}"


def fit_slope(sizes: Sequence[float], values: Sequence[float], confidence: float = CONFIDENCE) -> Fit | None:
    """Fit ``values ∝ sizes^slope``; None with fewer than three distinct positive sizes."""
    pts = [
        (float(n), float(y))
        for n, y in zip(sizes, values, strict=True)
        if n is not None and y is not None and math.isfinite(n) and math.isfinite(y) and n > 0 and y > 0
    ]
    if len({n for n, _ in pts}) < MIN_POINTS:
        return None
    from scipy import stats  # here, not at the top: importing it costs 1-3 s a report may not need

    x = np.log([n for n, _ in pts])
    y = np.log([v for _, v in pts])
    res = stats.linregress(x, y)
    dof = len(pts) - 2
    stderr = float(res.stderr) if math.isfinite(res.stderr) else 0.0  # constant values: an exact line
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * stderr
    r2 = float(res.rvalue) ** 2 if math.isfinite(res.rvalue) else 1.0
    return Fit(
        slope=float(res.slope),
        intercept=float(res.intercept),
        stderr=stderr,
        ci_low=float(res.slope) - half,
        ci_high=float(res.slope) + half,
        points=len(pts),
        r2=r2,
    )


#: Resamples of the paired samples behind a chained slope's interval (seeded: a report is stable).
RESAMPLES = 2000


def chained_fit(lengths: list[int], steps: list[dict[str, Any]]) -> Fit | None:
    """The slope of the times chained through ``steps`` (each length's time is the one before it
    times their paired ratio of medians), with an interval that covers both the line's 95%
    interval and the 95% range of the slope over resamples of every pair's samples: the chained
    points carry each step's noise into all later ones, which the line's interval alone ignores."""
    x = np.log(np.asarray(lengths, dtype=float))
    impl = [np.asarray(s["impl_ms"], dtype=float) for s in steps]
    peer = [np.asarray(s["peer_ms"], dtype=float) for s in steps]
    logs = np.log([np.median(a) / np.median(b) for a, b in zip(impl, peer, strict=True)])  # [steps]
    fit = fit_slope(lengths, list(np.exp(np.concatenate([[0.0], np.cumsum(logs)]))))
    if fit is None:
        return None
    rng = np.random.default_rng(0)
    drawn = np.empty((RESAMPLES, len(steps)))  # [resamples, steps]: log ratio of resampled medians
    for i, (a, b) in enumerate(zip(impl, peer, strict=True)):
        ma = np.median(rng.choice(a, (RESAMPLES, len(a))), axis=1)
        mb = np.median(rng.choice(b, (RESAMPLES, len(b))), axis=1)
        drawn[:, i] = np.log(ma / mb)
    y = np.concatenate([np.zeros((RESAMPLES, 1)), np.cumsum(drawn, axis=1)], axis=1)  # [resamples, lengths]
    xc = x - x.mean()
    slopes = (y - y.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)  # [resamples]
    low, high = np.percentile(slopes, [2.5, 97.5])
    return replace(fit, ci_low=min(fit.ci_low, float(low)), ci_high=max(fit.ci_high, float(high)))


def flagged(fit: Fit | None, claim: float | None, margin: float = FLAG_MARGIN) -> bool:
    """True when the measured slope is more than ``margin`` above the claimed exponent."""
    return fit is not None and claim is not None and fit.slope > claim + margin


#: A slope meets its claim only when its 95% interval is narrower than ± this.
PRECISION = 0.2


def verdict(fit: Fit | None, claim: float | None, sizes: int) -> str:
    """What a fit says of a claim: ``meets claim`` only with at least three sizes and a 95%
    interval narrower than ±0.2 that is not above the claim; ``above claim`` when the slope is more
    than 0.2 above it; ``too few sizes``, ``too noisy`` or ``no claim`` otherwise."""
    if sizes < MIN_POINTS or fit is None:
        return "too few sizes"
    if claim is None:
        return "no claim"
    if flagged(fit, claim):
        return "above claim"
    if (fit.ci_high - fit.ci_low) / 2 >= PRECISION:
        return "too noisy"
    return "meets claim"


def scaling_table(
    records: pd.DataFrame,
    declarations: dict[str, dict[str, Any]],
    paired: dict[str, list[dict[str, Any]]] | None = None,
) -> pd.DataFrame:
    """One row per (host, implementation, case group) with two or more ok sizes: time and memory
    slopes (from three sizes on), their CIs, the claims, the flags and each fit's verdict. Where
    every neighbouring pair of a group's lengths was timed alternately (``paired``: each run's
    rows of ``pairs.jsonl`` by its label; :mod:`attnbench.sweep.pairs`: because the records broke the
    claim, or for a slope the suite declares), the time slope is fitted to the times chained
    through them, and its fit says "paired"."""
    ok = records[records["status"] == Status.OK]
    by_run = {label: length_steps(rows) for label, rows in (paired or {}).items()}
    rows: list[dict[str, Any]] = []
    for (machine, impl, *group), sub in ok.groupby(["host", "impl", *GROUP_KEYS], sort=True, dropna=False):
        decl = declarations.get(str(impl), {})
        row: dict[str, Any] = {
            "machine": machine,
            "impl": impl,
            "group": group_label(dict(zip(GROUP_KEYS, group, strict=True))),
        }
        sizes = sub["x"].astype(float)
        axis = str(sub["axis"].iloc[0])
        row["sizes"] = _sizes(sub["x"], AXIS_SYMBOL.get(axis, "N"))
        distinct = sub["x"].nunique()
        chained = _claim_chain(sub, str(impl), by_run.get(str(sub["machine"].iloc[0]), {}))  # a run per host label
        for what, column in (("time", "time_ms"), ("memory", "peak_mem_bytes")):
            fit = fit_slope(list(sizes), list(sub[column].astype(float)))
            chained = chained if what == "time" else None
            claim = decl.get(f"{what}_growth") if axis == "seq_len" else None  # claims are for Nq = Nk = N
            claim = None if claim is None else float(claim)
            fit = chained or fit
            row[f"{what}_slope"] = None if fit is None else round(fit.slope, 3)
            row[f"{what}_ci_low"] = None if fit is None else round(fit.ci_low, 3)
            row[f"{what}_ci_high"] = None if fit is None else round(fit.ci_high, 3)
            row[f"{what}_fit"] = "" if fit is None else fit.describe() + (" paired" if chained else "")
            row[f"{what}_claim"] = claim
            row[f"{what}_flag"] = flagged(fit, claim)
            row[f"{what}_verdict"] = verdict(fit, claim, distinct)
        if distinct >= 2:
            rows.append(row)
    return pd.DataFrame(rows, columns=_COLUMNS)


def _claim_chain(group: pd.DataFrame, impl: str, paired: dict[tuple[Any, ...], dict[str, Any]]) -> Fit | None:
    """The time slope of a self-attention group fitted through its claim's paired lengths (None
    unless every neighbouring pair was timed: :func:`attnbench.sweep.pairs.chain`)."""
    if not paired or str(group["axis"].iloc[0]) != "seq_len" or (group["kv_len"] != group["seq_len"]).any():
        return None
    ordered = group.sort_values("seq_len")
    steps = chain([case_of(r) for r in records_of(ordered)], impl, paired)
    return None if steps is None else chained_fit([int(n) for n in ordered["seq_len"]], steps)


_COLUMNS = ["machine", "impl", "group", "sizes"] + [
    f"{what}_{part}"
    for what in ("time", "memory")
    for part in ("slope", "ci_low", "ci_high", "fit", "claim", "flag", "verdict")
]


def _sizes(values: pd.Series, symbol: str) -> str:
    ns = sorted({int(v) for v in values})
    return f"{symbol} {ns[0]}–{ns[-1]} ({len(ns)} sizes)"
