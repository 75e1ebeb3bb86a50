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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from attnbench.case import GROUP_KEYS, group_label
from attnbench.report.data import AXIS_SYMBOL

MIN_POINTS = 3
FLAG_MARGIN = 0.2
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


def scaling_table(records: pd.DataFrame, declarations: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per (host, implementation, case group) with two or more ok sizes: time and memory
    slopes (from three sizes on), their CIs, the claims, the flags and each fit's verdict."""
    ok = records[records["status"] == "ok"]
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
        for what, column in (("time", "time_ms"), ("memory", "peak_mem_bytes")):
            fit = fit_slope(list(sizes), list(sub[column].astype(float)))
            claim = decl.get(f"{what}_growth") if axis == "seq_len" else None  # claims are for Nq = Nk = N
            claim = None if claim is None else float(claim)
            row[f"{what}_slope"] = None if fit is None else round(fit.slope, 3)
            row[f"{what}_ci_low"] = None if fit is None else round(fit.ci_low, 3)
            row[f"{what}_ci_high"] = None if fit is None else round(fit.ci_high, 3)
            row[f"{what}_fit"] = "" if fit is None else fit.describe()
            row[f"{what}_claim"] = claim
            row[f"{what}_flag"] = flagged(fit, claim)
            row[f"{what}_verdict"] = verdict(fit, claim, distinct)
        if distinct >= 2:
            rows.append(row)
    return pd.DataFrame(rows, columns=_COLUMNS)


_COLUMNS = ["machine", "impl", "group", "sizes"] + [
    f"{what}_{part}"
    for what in ("time", "memory")
    for part in ("slope", "ci_low", "ci_high", "fit", "claim", "flag", "verdict")
]


def _sizes(values: pd.Series, symbol: str) -> str:
    ns = sorted({int(v) for v in values})
    return f"{symbol} {ns[0]}–{ns[-1]} ({len(ns)} sizes)"
