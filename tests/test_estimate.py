"""The plan's predictions: a pair's expected seconds, the forecast of the time left, the cut of a
``--max-minutes`` plan, and the skip of a size predicted far past its budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import attnbench

from attnbench.case.problem import Problem
from attnbench.measure.records import read_records, record_key
from attnbench.sweep import estimate
from attnbench.sweep.jobs import Failures

BUDGET = {"timeout_s": 60.0, "min_time_s": 0.2, "max_time_s": 2.0, "min_repeats": 5}


def test_a_call_is_predicted_from_the_measured_ceilings() -> None:
    case = Problem(seq_len=4096, heads=8, head_dim=64)
    slow, fast = estimate.call_seconds(case, gflops=10.0), estimate.call_seconds(case, gflops=100.0)
    assert slow == pytest.approx(10 * fast)
    # a decode step against a long cache is bound by the bytes it reads, not its FLOPs
    step = Problem(mode="decode", seq_len=1, kv_len=65536, heads=32, kv_heads=8, head_dim=128)
    assert estimate.call_seconds(step, gflops=1e6, gbps=1.0) > estimate.call_seconds(step, gflops=1e6, gbps=100.0)


def test_a_pair_costs_its_overhead_its_calls_and_its_timing_and_never_past_three_budgets() -> None:
    small, big = Problem(seq_len=64), Problem(seq_len=65536)
    assert estimate.pair_seconds(small, BUDGET, call_s=0.001) == pytest.approx(
        estimate.OVERHEAD_S + estimate.UNTIMED_CALLS * 0.001 + 2 * BUDGET["min_time_s"]
    )
    assert estimate.pair_seconds(big, BUDGET, call_s=1000.0) == 3 * BUDGET["timeout_s"]


def test_an_earlier_run_on_this_machine_is_the_prediction(tmp_path: Path) -> None:
    case = Problem(seq_len=512)
    row = {"impl": "naive", **case.fields(), "machine": "m1", "elapsed_s": 7.5, "status": "ok"}
    other = {**row, "machine": "m2", "elapsed_s": 99.0}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(other) + "\n")
    known = estimate.history(tmp_path, "m1")
    assert known == {record_key(row): 7.5}
    assert estimate.plan_seconds([(case, "naive"), (case, "chunked")], BUDGET, known=known)[0] == 7.5
    assert estimate.history(tmp_path, "m1", exclude=tmp_path / "old") == {}


def test_the_forecast_scales_uninformed_pairs_by_the_pace_of_what_ran() -> None:
    pairs = [(Problem(seq_len=n, dtype=d), "naive") for n, d in ((128, "float32"), (128, "bfloat16"), (512, "float16"))]
    forecast = estimate.Forecast.of(pairs, [1.0, 2.0, 3.0], BUDGET, {"naive": 2.0})
    keys = list(forecast.pairs)
    assert forecast.seconds_left() == 6.0
    forecast.finish(keys[0], elapsed_s=2.0, call_ms=None)  # twice its plan, nothing measured of its call
    assert forecast.seconds_left() == pytest.approx(2 * (2.0 + 3.0))
    forecast.finish(keys[1], elapsed_s=None, call_ms=None, ran=False)  # settled without running: no pace
    assert forecast.seconds_left() == pytest.approx(2 * 3.0)


def test_a_measured_smaller_size_predicts_the_larger_ones_of_its_group() -> None:
    sizes = (1024, 2048, 4096)
    pairs = [(Problem(seq_len=n), "naive") for n in sizes] + [(Problem(seq_len=4096), "linear")]
    forecast = estimate.Forecast.of(pairs, [100.0] * 4, BUDGET, {"naive": 2.0, "linear": 1.0})
    keys = list(forecast.pairs)
    forecast.finish(keys[0], elapsed_s=1.0, call_ms=10.0)  # 10 ms at 1K
    # 40 ms at 2K and 160 ms at 4K (N^2); linear's pair keeps its plan
    assert forecast.expected(keys[1]) == pytest.approx(estimate.pair_seconds(pairs[1][0], BUDGET, 0.04))
    assert forecast.expected(keys[2]) == pytest.approx(estimate.pair_seconds(pairs[2][0], BUDGET, 0.16))
    assert forecast.expected(keys[3]) == 100.0
    # under a limit the most expensive pair left is the one left out, and a group's first size runs
    assert forecast.over(keys[3], seconds_left=150.0) is None  # linear's first size runs while it fits
    assert forecast.over(keys[3], seconds_left=50.0) == 100.0
    forecast.finish(keys[3], elapsed_s=100.0, call_ms=5000.0)
    assert forecast.over(keys[2], seconds_left=2.0) is not None
    assert forecast.over(keys[1], seconds_left=5.0) is None


def test_the_forecast_works_out_each_pairs_group_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run asks the time left after every record and whether each pair fits before it starts.
    Each answer read every pair's group afresh (a copy of its case's fields): with gpt-oss-20b's
    1890 pairs under ``--max-minutes`` that was 231 s of a 330 s run. Now a group is worked out
    once per pair, and the expectations once per finished pair."""
    calls = 0
    real = estimate.group_of

    def counted(case: Problem, impl: str) -> tuple:
        nonlocal calls
        calls += 1
        return real(case, impl)

    monkeypatch.setattr(estimate, "group_of", counted)
    pairs = [(Problem(seq_len=n, heads=h), name) for n in (256, 512, 1024) for h in (2, 4, 8) for name in "abcdefg"]
    forecast = estimate.Forecast.of(pairs, [1.0] * len(pairs), BUDGET, {name: 2.0 for name in "abcdefg"})
    made = calls
    assert made == len(pairs)  # one per pair, kept
    for key in list(forecast.pairs):
        forecast.over(key, seconds_left=10.0)
        forecast.finish(key, elapsed_s=1.0, call_ms=1.0)
        forecast.seconds_left()
    assert calls == made  # none after planning


def test_cut_leaves_out_the_most_expensive_first() -> None:
    assert estimate.cut([5.0, 1.0, 3.0, 1.0], limit_s=5.0) == {0}
    assert estimate.cut([5.0, 1.0, 3.0, 1.0], limit_s=1.5) == {0, 2, 1}
    assert estimate.cut([1.0, 1.0], limit_s=10.0) == set()
    # with ranks (a pair's size among its group's), the largest sizes go first, however cheap
    assert estimate.cut([5.0, 1.0, 3.0, 1.0], limit_s=8.0, rank=[0, 2, 1, 2]) == {1, 3}


def _timed(n: int, ms: float) -> dict[str, object]:
    return {"impl": "naive", **Problem(seq_len=n).fields(), "status": "ok", "time_ms": ms}


def test_a_size_predicted_far_past_its_budget_is_skipped_with_the_prediction() -> None:
    failures = Failures()
    failures.add(_timed(2048, 500.0))
    failures.add(_timed(4096, 2000.0))
    row = {"impl": "naive", **Problem(seq_len=8192).fields()}
    # 2 s at 4K, quadratic: 8 s a call at 8K; 9 calls are 72 s, under twice the 60 s timeout
    assert failures.predicted(row, 2.0, BUDGET) is None
    row16 = {"impl": "naive", **Problem(seq_len=16384).fields()}
    why = failures.predicted(row16, 2.0, BUDGET)  # 32 s a call: 288 s
    assert why is not None and "predicted 288 s" in why and "4096" in why and "N^2" in why
    # the declared growth decides: a linear implementation at 16K is 8 s a call, 72 s: run it
    assert failures.predicted(row16, 1.0, BUDGET) is None
    assert failures.predicted(row16, None, BUDGET) is None  # nothing declared, nothing predicted
    # another group (another dtype) has nothing measured
    other = {"impl": "naive", **Problem(seq_len=16384, dtype="bfloat16").fields()}
    assert failures.predicted(other, 2.0, BUDGET) is None


def test_a_baseline_that_wasted_its_budget_is_not_run_at_that_size_or_above_in_its_group() -> None:
    failures = Failures()
    note = "baseline sdpa ran past its budget during the interleaved timing; the implementation was timed alone"
    failures.add({"impl": "naive", **Problem(seq_len=2048).fields(), "status": "ok", "baseline_note": note})
    failures.add({"impl": "naive", "status": "ok", "baseline_note": "baseline x; the implementation was timed alone",
                  **Problem(seq_len=64).fields()})  # fmt: skip  # names no failure: not one
    for n, gone in ((1024, False), (2048, True), (4096, True)):
        row = {"impl": "chunked", **Problem(seq_len=n).fields()}
        why = failures.baseline_gone(row, "sdpa")
        assert (why is not None) == gone, n
        if why:
            assert why.startswith("baseline sdpa not run: it ran past its budget during the interleaved timing")
            assert "at seq_len 2048, kv_len 2048" in why
    other = {"impl": "chunked", **Problem(seq_len=4096, dtype="bfloat16").fields()}  # another group
    assert failures.baseline_gone(other, "sdpa") is None
    assert failures.baseline_gone({"impl": "chunked", **Problem(seq_len=4096).fields()}, "sdpa_math") is None
    assert failures.baseline_gone({"impl": "chunked", **Problem(seq_len=64).fields()}, "x") is None


@pytest.mark.slow
def test_max_minutes_plans_the_run_and_skips_what_does_not_fit(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = attnbench("run", "smoke", "--out", str(out), "--max-minutes", "0.01", "--no-report")
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = [line for line in proc.stdout.splitlines() if line.startswith("plan: ")]
    assert plan and "expected to take about" in plan[0] and "--max-minutes 0.01" in plan[0]
    records = read_records(out / "results.jsonl")
    ran = [r for r in records if r["status"] not in ("skipped", "unavailable", "unsupported")]
    assert not ran, [(r["impl"], r["status"]) for r in ran]
    assert all("--max-minutes 0.01" in r["reason"] for r in records if r["status"] == "skipped")
    info = json.loads((out / "run.json").read_text())
    assert info["plans"][0]["max_minutes"] == 0.01 and info["plans"][0]["expected_s"] > 0
    bad = attnbench("run", "smoke", "--out", str(tmp_path / "bad"), "--max-minutes", "-1")
    assert bad.returncode == 2 and "--max-minutes" in bad.stderr
