"""The measurement engine end to end: every status from a deliberately broken plugin, a killed
and resumed run, workers that die with their runner, and a sleep measured at its length."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
from cli_helpers import attnbench

from attnbench.case.status import STATUSES
from attnbench.measure.records import read_records, record_key

HERE = Path(__file__).resolve().parent
PLUGIN = HERE / "status_plugins" / "misbehaving.py"
EVERY_STATUS = HERE / "status_plugins" / "every_status.toml"


@pytest.fixture(scope="module")
def every_status_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("every_status") / "run"
    proc = attnbench("run", str(EVERY_STATUS), "--plugin", str(PLUGIN), "--out", str(out), "--no-report")
    assert proc.returncode == 0, proc.stderr
    return out, read_records(out / "results.jsonl")


def by_impl(records: list[dict[str, Any]], seq_len: int) -> dict[str, dict[str, Any]]:
    return {r["impl"]: r for r in records if r["seq_len"] == seq_len}


@pytest.mark.slow
def test_every_status_is_produced_and_every_pair_recorded_once(
    every_status_run: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, records = every_status_run
    assert len(records) == 11 * 2
    assert len({record_key(r) for r in records}) == len(records)
    assert set(Counter(r["status"] for r in records)) == set(STATUSES)


@pytest.mark.parametrize(
    ("impl", "status", "reason_part"),
    [
        ("good_sdpa", "ok", ""),
        ("bad_segfault", "crashed", "SIGSEGV"),
        ("bad_hang", "timeout", "within 6 s"),
        ("bad_alloc", "oom", "allocate"),
        ("bad_nan", "inaccurate", "nan"),
        ("bad_shape", "error", "shape"),
        ("bad_raise", "error", "deliberate failure from bad_raise"),
        ("bad_unavailable", "unavailable", "needs a TPU"),
        ("only_float64", "unsupported", "float64"),
        ("huge_estimate", "oom", "declares"),
        ("bad_reference", "unchecked", ""),
    ],
)
def test_each_plugin_ends_with_its_status(
    every_status_run: tuple[Path, list[dict[str, Any]]], impl: str, status: str, reason_part: str
) -> None:
    record = by_impl(every_status_run[1], 64)[impl]
    assert record["status"] == status
    assert reason_part in record["reason"]


def test_a_budget_failure_skips_larger_sizes(every_status_run: tuple[Path, list[dict[str, Any]]]) -> None:
    larger = by_impl(every_status_run[1], 128)
    for impl in ("bad_hang", "bad_segfault", "bad_alloc"):
        assert larger[impl]["status"] == "skipped"
        assert "seq_len 64" in larger[impl]["reason"]
    assert larger["good_sdpa"]["status"] == "ok"
    assert larger["bad_raise"]["status"] == "error"  # an error is no budget failure: it is tried again


def test_ok_record_is_complete(every_status_run: tuple[Path, list[dict[str, Any]]]) -> None:
    out, records = every_status_run
    ok = by_impl(records, 128)["good_sdpa"]
    assert ok["time_q1_ms"] <= ok["time_ms"] <= ok["time_q3_ms"]
    assert ok["time_min_ms"] == min(ok["samples_ms"])
    assert len(ok["samples_ms"]) >= 3
    assert ok["flops"] == 4 * 1 * 2 * 128 * 128 * 16
    assert ok["gflops"] == pytest.approx(ok["flops"] / (ok["time_ms"] / 1e3) / 1e9)
    assert ok["peak_fraction"] == pytest.approx(ok["gflops"] / ok["peak_gflops"])
    assert ok["max_abs_err"] <= ok["accuracy_bound"]
    assert ok["threads_used"] >= 1
    info = json.loads((out / "run.json").read_text())
    assert info["ended"] is not None
    assert info["calibration"][0]["gflops"] > 0
    assert {"os", "cpu", "cores", "memory_bytes", "gpu"} <= set(info["machine"])
    assert info["versions"]["torch"]


def test_every_record_says_where_it_ended(every_status_run: tuple[Path, list[dict[str, Any]]]) -> None:
    out, records = every_status_run
    steps = {r["impl"]: r["step"] for r in records if r["seq_len"] == 64}
    assert steps == {
        "good_sdpa": "done",
        "bad_segfault": "first call",
        "bad_hang": "first call",
        "bad_alloc": "first call",
        "bad_nan": "done",
        "bad_shape": "first call",
        "bad_raise": "first call",
        "bad_unavailable": "availability",
        "only_float64": "supports",
        "huge_estimate": "memory estimate",
        "bad_reference": "reference",
    }
    assert all(r["step"] == "" for r in records if r["status"] == "skipped")  # decided by the runner
    run = json.loads((out / "run.json").read_text())
    assert run["suite"]["hash"]


def test_nan_output_is_inaccurate_and_never_a_speedup(every_status_run: tuple[Path, list[dict[str, Any]]]) -> None:
    record = by_impl(every_status_run[1], 64)["bad_nan"]
    assert record["speedup"] is None


SLOW_SUITE = """
[suite]
name = "slow"
implementations = ["sleep_20ms", "good_sdpa"]
baseline = "good_sdpa"
[grid]
heads = [1]
seq_len = [16, 32, 48, 64, 80, 96]
head_dim = [8]
dtype = ["float32"]
causal = [false]
[budget]
min_time_s = 0.3
max_time_s = 0.5
"""


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
def test_kill_9_then_resume_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    suite = tmp_path / "slow.toml"
    suite.write_text(SLOW_SUITE)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "attnbench", "run", str(suite), "--plugin", str(PLUGIN), "--out", str(out)]
    runner = subprocess.Popen([*cmd, "--no-report"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(read_records(results)) < 3:
        time.sleep(0.2)
    workers = _children(runner.pid)
    assert workers, "the runner should have a live worker"
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    kept = read_records(results)
    assert 3 <= len(kept) < 12

    gone_by = time.monotonic() + 10
    while time.monotonic() < gone_by and any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers):
        time.sleep(0.2)
    assert not [w.pid for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]

    proc = subprocess.run([*cmd, "--resume", "--no-report"], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    final = read_records(results)
    assert len(final) == 12
    assert len({record_key(r) for r in final}) == 12
    assert all(line.strip() for line in results.read_text().splitlines())
    for row in kept:  # what was finished before the kill is kept as it was
        assert row in final
    info = json.loads((out / "run.json").read_text())
    assert len(info["resumed"]) == len(info["resumed_git_commits"]) == 1  # when, and with which code
    assert info["resumed_git_commits"][0] == info["git_commit"]


def test_resume_without_run_json_is_a_usage_error(tmp_path: Path) -> None:
    proc = attnbench("run", "--resume", "--out", str(tmp_path / "nothing"))
    assert proc.returncode == 2
    assert "run.json" in proc.stderr


def test_existing_results_are_never_overwritten(every_status_run: tuple[Path, list[dict[str, Any]]]) -> None:
    out, records = every_status_run
    proc = attnbench("run", str(EVERY_STATUS), "--plugin", str(PLUGIN), "--out", str(out), "--no-report")
    assert proc.returncode == 2
    assert "--resume" in proc.stderr
    assert len(read_records(out / "results.jsonl")) == len(records)


def test_a_known_sleep_is_measured_within_ten_percent(tmp_path: Path) -> None:
    suite = tmp_path / "sleep.toml"
    suite.write_text(SLOW_SUITE.replace("[16, 32, 48, 64, 80, 96]", "[16]"))
    out = tmp_path / "run"
    proc = attnbench(
        "run", str(suite), "--plugin", str(PLUGIN), "--out", str(out), "--only", "sleep_20ms", "--no-report"
    )
    assert proc.returncode == 0, proc.stderr
    (record,) = read_records(out / "results.jsonl")
    assert record["status"] == "ok"
    assert record["time_min_ms"] == pytest.approx(20.0, rel=0.10)  # the best case: load only adds
    assert record["time_ms"] >= 19.8
    assert record["baseline_time_ms"] < record["time_ms"]  # the interleaved baseline was timed too
    assert len(record["baseline_samples_ms"]) == len(record["samples_ms"])


@pytest.mark.slow
def test_a_calibration_cache_reuses_this_hosts_measurement_and_says_so(tmp_path: Path) -> None:
    """With ATTNBENCH_CALIBRATION_CACHE set, the first run measures and stores its calibration;
    the next takes it from the file, labelled with when it was measured."""
    suite = tmp_path / "tiny.toml"
    suite.write_text(SLOW_SUITE.replace("[16, 32, 48, 64, 80, 96]", "[16]").replace('"sleep_20ms", ', ""))
    cache = tmp_path / "cache" / "calibration.json"

    def calibration(out: str, env_value: str) -> list[dict[str, Any]]:
        env = {**os.environ, "ATTNBENCH_CALIBRATION_CACHE": env_value}
        cmd = [sys.executable, "-m", "attnbench", "run", str(suite), "--plugin", str(PLUGIN)]
        proc = subprocess.run([*cmd, "--out", str(tmp_path / out), "--no-report"], env=env, capture_output=True,
                              text=True, timeout=300, check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return list(json.loads((tmp_path / out / "run.json").read_text())["calibration"])

    (first,) = calibration("first", str(cache))
    assert first["gflops"] > 0 and first["measured_at"] and "reused" not in first
    assert [e["measured_at"] for e in json.loads(cache.read_text())] == [first["measured_at"]]
    (second,) = calibration("second", str(cache))
    assert second["reused"] == first["measured_at"] and second["gflops"] == first["gflops"]


def test_the_calibration_cache_is_this_hosts_by_default_recent_only_and_can_be_turned_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import datetime as dt

    from attnbench.sweep.calibration_cache import ENV, MAX_AGE_S, CalibrationCache

    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = CalibrationCache.from_env()
    assert cache is not None and cache.path == tmp_path / "attnbench" / "calibration.json"
    key = {"host": "h", "torch": "2.13.0", "device": "cpu", "dtype": "float32", "requested_threads": 2}
    fresh = dt.datetime.now(dt.UTC).astimezone().isoformat(timespec="seconds")
    stale = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=MAX_AGE_S + 60)).isoformat(timespec="seconds")
    cache.add({**key, "gflops": 100.0, "measured_at": stale})
    assert cache.find(**key) is None  # older than a day: measured again
    cache.add({**key, "gflops": 120.0, "measured_at": fresh})
    found = cache.find(**key)
    assert found is not None and found["gflops"] == 120.0
    assert cache.find(**{**key, "requested_threads": 1}) is None
    for off in ("off", "  ", "0"):
        monkeypatch.setenv(ENV, off)
        assert CalibrationCache.from_env() is None
    monkeypatch.setenv(ENV, str(tmp_path / "mine.json"))
    assert CalibrationCache.from_env().path == tmp_path / "mine.json"  # type: ignore[union-attr]
