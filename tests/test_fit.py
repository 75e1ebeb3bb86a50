"""Scaling fits: known exponents are recovered within their CI; too few sizes give no fit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attnbench.results.report.data import load_data
from attnbench.results.report.fit import FLAG_MARGIN, Fit, fit_slope, flagged, scaling_table, verdict

DATA = Path(__file__).parent / "data" / "generated"  # made by tests/make_fixtures.py, not measured
SIZES = [256, 512, 1024, 2048, 4096, 8192]


def synthetic(exponent: float, seed: int, sigma: float = 0.05, sizes: list[int] = SIZES) -> list[float]:
    rng = np.random.default_rng(seed)
    return [3e-6 * n**exponent * float(rng.lognormal(0.0, sigma)) for n in sizes]


@pytest.mark.parametrize("exponent", [1.0, 1.5, 2.0])
def test_known_exponent_within_ci(exponent: float) -> None:
    fit = fit_slope(SIZES, synthetic(exponent, seed=1))
    assert fit is not None
    assert fit.contains(exponent), fit
    assert fit.ci_high - fit.ci_low < 0.3  # 6 sizes, 5% noise: a tight interval
    assert fit.points == len(SIZES)


def test_ci_covers_about_95_percent() -> None:
    """Over many seeds the 95% interval holds the true exponent in most fits (and is not absurdly wide)."""
    hits = [fit.contains(1.5) for seed in range(200) if (fit := fit_slope(SIZES, synthetic(1.5, seed)))]
    assert len(hits) == 200
    assert 0.88 <= sum(hits) / len(hits) <= 0.995


def test_wrong_exponent_outside_ci() -> None:
    fit = fit_slope(SIZES, synthetic(2.0, seed=3))
    assert fit is not None and not fit.contains(1.5)


def test_noise_free_is_exact() -> None:
    fit = fit_slope([100, 200, 400], [n**1.5 for n in (100, 200, 400)])
    assert fit is not None
    assert fit.slope == pytest.approx(1.5, abs=1e-9)
    assert fit.r2 == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("sizes", "values"),
    [
        ([1024, 2048], [1.0, 4.0]),  # two sizes: no error estimate
        ([1024, 1024, 2048], [1.0, 1.1, 4.0]),  # three points, two distinct sizes
        ([512, 1024, 2048], [1.0, None, 4.0]),  # a missing value leaves two
        ([512, 1024, 2048], [0.0, 2.0, 4.0]),  # zero memory cannot be logged
        ([512, 1024, 2048], [math.nan, 2.0, 4.0]),
        ([], []),
    ],
)
def test_too_few_points_no_fit(sizes: list[int], values: list[float | None]) -> None:
    assert fit_slope(sizes, values) is None  # type: ignore[arg-type]


def test_flag_rule() -> None:
    fit = Fit(slope=2.25, intercept=0.0, stderr=0.01, ci_low=2.2, ci_high=2.3, points=5, r2=1.0)
    assert flagged(fit, 2.0)
    assert not flagged(fit, 2.1)  # 2.25 is not more than 0.2 above 2.1
    assert not flagged(fit, None)
    assert not flagged(None, 1.0)
    assert flagged(fit, 2.25 - FLAG_MARGIN - 0.01)


def test_scaling_table_on_recorded_sweep() -> None:
    data = load_data([DATA / "sweep"])
    table = scaling_table(data.records, data.declarations)
    full = table[table["group"] == "forward · fp32 · cpu · B1 H8 D64 · full"].set_index("impl")
    assert full.loc["sdpa", "time_slope"] == pytest.approx(2.0, abs=0.1)
    assert full.loc["linear", "time_slope"] == pytest.approx(1.0, abs=0.15)
    assert not full.loc["sdpa", "time_flag"]
    assert not full.loc["linear", "time_flag"]
    # local_window claims N^1 but builds a dense mask: measured ~N^2, flagged for time and memory
    assert full.loc["local_window", "time_flag"] and full.loc["local_window", "memory_flag"]
    # naive stopped at oom: fitted over the four sizes that ran
    assert full.loc["naive", "sizes"] == "N 512–4096 (4 sizes)"
    # slow_loop ran at two sizes only: a row that says so, with no slope and no ✓
    assert full.loc["slow_loop", "time_verdict"] == "too few sizes" and pd.isna(full.loc["slow_loop", "time_slope"])
    assert full.loc["sdpa", "time_verdict"] == "meets claim"
    assert full.loc["local_window", "time_verdict"] == "above claim"
    assert isinstance(table, pd.DataFrame)


@pytest.mark.parametrize(
    ("sizes", "times", "claim", "expected"),
    [
        ([512, 1024, 2048], [1.0, 4.0, 16.0], 2.0, "meets claim"),
        ([512, 1024], [1.0, 4.0], 2.0, "too few sizes"),
        ([512, 1024, 2048], [1.0, 9.0, 16.0], 2.0, "too noisy"),  # slope 2.0, interval ±10
        ([512, 1024, 2048], [1.0, 8.0, 64.0], 2.0, "above claim"),
        ([512, 1024, 2048], [1.0, 4.0, 16.0], None, "no claim"),
    ],
)
def test_a_slope_meets_its_claim_only_with_three_sizes_and_a_narrow_interval(
    sizes: list[int], times: list[float], claim: float | None, expected: str
) -> None:
    """The old table showed ✓ beside "1.20 ± 13.56"."""
    assert verdict(fit_slope(sizes, times), claim, len(sizes)) == expected
