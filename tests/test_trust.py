"""The harness never blames an implementation for its own limits: the baseline, the reference,
memory predictions and the run folder are the harness's; and every record says where it ended."""

from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from cli_helpers import attnbench

from attnbench.measure.devices import usable_cores
from attnbench.measure.records import read_records
from attnbench.sweep.workers import WorkerPool, WorkerStartError

HERE = Path(__file__).parent
PLUGIN = HERE / "status_plugins" / "trust.py"


def run_suite(tmp_path: Path, text: str, *extra: str) -> list[dict[str, Any]]:
    suite = tmp_path / "suite.toml"
    suite.write_text(text)
    out = tmp_path / "run"
    proc = attnbench("run", str(suite), "--plugin", str(PLUGIN), "--out", str(out), "--no-report", *extra)
    assert proc.returncode == 0, proc.stderr
    return read_records(out / "results.jsonl")


BASELINE_SUITE = """
[suite]
implementations = ["fast_sdpa"]
baseline = "{baseline}"
[grid]
heads = [1]
seq_len = [64, 128]
head_dim = [16]
dtype = ["float32"]
causal = [false]
[budget]
timeout_s = {timeout}
min_time_s = 0.05
max_time_s = 0.3
"""


@pytest.mark.slow
def test_a_fast_implementation_beside_a_slow_baseline_stays_ok(tmp_path: Path) -> None:
    """A 1.5 s baseline in a 5 s budget: the baseline gets its own repeat count and budget, so the
    fast implementation is neither timed out nor its next size skipped. A second grid names no
    baseline (``baseline = ""``): its pair spends nothing on it."""
    text = BASELINE_SUITE.format(baseline="slow_baseline", timeout=5).replace("[64, 128]", "[64]")
    text += '[[grid]]\nbaseline = ""\nheads = [1]\nseq_len = [128]\nhead_dim = [16]\n'
    text += 'dtype = ["float32"]\ncausal = [false]\n'
    records = run_suite(tmp_path, text.replace("[grid]", "[[grid]]", 1))
    assert [r["status"] for r in records] == ["ok", "ok"]
    beside, alone = records
    # each baseline sample is one 1.5 s call, not the implementation's repeat count of them
    assert all(1450 < ms < 2500 for ms in beside["baseline_samples_ms"]) and beside["baseline_samples_ms"]
    assert beside["speedup"] > 10 and beside["baseline"] == "slow_baseline"
    assert alone["seq_len"] == 128 and alone["baseline"] == "" and not alone["baseline_samples_ms"]
    assert alone["speedup"] is None and alone["baseline_note"] == ""
    assert alone["elapsed_s"] < min(beside["baseline_samples_ms"]) / 1e3  # no baseline call at all


def test_a_kernels_temporaries_are_timed_as_in_a_users_loop_and_counted_in_its_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call that allocates and frees a 1 MiB workspace: in a user's loop glibc reuses those
    pages, and so must the timed calls of a worker (mapping them afresh on every call cost
    ``linear`` 2-3x its time); the memory pass still sees the workspace."""
    faults = tmp_path / "faults.txt"
    monkeypatch.setenv("ATTNBENCH_TEST_FAULTS", str(faults))
    text = BASELINE_SUITE.format(baseline="", timeout=30).replace('["fast_sdpa"]', '["temporaries"]')
    text += "min_repeats = 12\n"  # the calls counted below, however slow a loaded machine makes each
    (record,) = run_suite(tmp_path, text.replace("[64, 128]", "[64]"))
    assert record["status"] == "ok"
    per_call = sorted(int(x) for x in faults.read_text().split())
    assert len(per_call) >= 10
    assert per_call[len(per_call) // 2] < 32, per_call  # the median call faults in none of its 256 pages
    assert max(per_call) >= 200  # the first calls, and the memory pass, did
    assert record["peak_mem_bytes"] >= 2**19  # the workspace is seen (heap pages reused: about 0)


@pytest.mark.slow
def test_a_baseline_past_its_own_budget_costs_the_implementation_nothing(tmp_path: Path) -> None:
    """Nor the next pairs: a baseline that ran past its budget at N=64 is not run again at N=128
    (it would cost that pair its whole budget again), and the record says why."""
    records = run_suite(tmp_path, BASELINE_SUITE.format(baseline="hanging_baseline", timeout=6))
    assert [r["status"] for r in records] == ["ok", "ok"]
    for r in records:
        assert r["speedup"] is None and r["baseline_time_ms"] is None
        assert (
            r["baseline_note"].startswith("baseline hanging_baseline") and "ran past its budget" in r["baseline_note"]
        )
        assert r["step"] == "done" and r["time_ms"] > 0
    small, large = records
    assert small["baseline_note"].endswith("; the implementation was timed alone")
    assert large["baseline_note"].startswith("baseline hanging_baseline not run: it ran past its budget at seq_len 64")
    assert large["elapsed_s"] < 6  # no wait for the baseline's budget


@pytest.mark.slow
def test_a_plain_sdpa_function_plugin_runs_at_16k_in_a_3_gib_budget(tmp_path: Path) -> None:
    """No memory declared, so nothing is predicted: it runs under the cap (the old default
    assumed a quadratic footprint, 4 GiB here, and recorded oom without running it)."""
    suite = """
[suite]
implementations = ["plain_sdpa"]
baseline = ""
[grid]
heads = [2]
seq_len = [16384]
head_dim = [64]
dtype = ["float32"]
causal = [true]
[budget]
memory_gib = 3
min_time_s = 0.01
max_time_s = 0.01
min_repeats = 3
accuracy_rows = 32
"""
    (record,) = run_suite(tmp_path, suite)
    assert record["status"] == "ok", record["reason"]
    assert record["peak_mem_bytes"] < 3 * 2**30


@pytest.mark.slow
def test_an_approximation_whose_reference_fails_is_unchecked_never_failed_and_never_ranked(tmp_path: Path) -> None:
    """An approximation is judged by its own reference() alone: when that raises or kills the
    worker, its accuracy could not be checked. That is not the implementation's failure (its time
    and memory are kept), and it is not ``ok`` either: ``unchecked``, with the reason."""
    suite = """
[suite]
implementations = ["reference_ooms", "reference_crashes"]
baseline = ""
[grid]
heads = [1]
seq_len = [64, 128]
head_dim = [16]
dtype = ["float32"]
causal = [false]
[budget]
min_time_s = 0.01
max_time_s = 0.05
"""
    records = run_suite(tmp_path, suite)
    assert len(records) == 4
    for r in records:
        assert r["status"] == "unchecked" and r["time_ms"] > 0 and r["peak_mem_bytes"] is not None
        assert r["checks"] == []
        assert "accuracy not checked" in r["check_note"] and "its own reference()" in r["check_note"]
    ooms = [r for r in records if r["impl"] == "reference_ooms"]
    assert all("4 GiB buffer" in r["check_note"] for r in ooms)
    crashes = [r for r in records if r["impl"] == "reference_crashes"]
    assert all("SIGSEGV" in r["check_note"] for r in crashes)


@pytest.mark.slow
def test_an_exact_claim_is_judged_before_its_own_reference_runs_and_a_stored_output_is_found_out(
    tmp_path: Path,
) -> None:
    """Nothing a plugin supplies can discard the exact verdict: zeros declared exact are
    ``inaccurate`` whether their own reference() raises MemoryError or kills the worker (that adds a
    note). And the call that is judged is the call that was timed: a plugin returning the output it
    stored for the same tensors is timed on scrambled inputs, judged on the seeded ones, and is
    ``inaccurate``; SDPA beside it is ``ok``."""
    suite = """
[suite]
implementations = ["zeros_reference_ooms", "zeros_reference_crashes", "stores_outputs", "fast_sdpa"]
baseline = "fast_sdpa"
[grid]
heads = [2]
seq_len = [256]
head_dim = [32]
dtype = ["float32", "bfloat16"]
causal = [false, true]
mode = ["forward", "forward_backward"]
[budget]
min_time_s = 0.01
max_time_s = 0.05
"""
    records = run_suite(tmp_path, suite)
    assert len(records) == 32
    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault(r["impl"], []).append(r)
    for r in by["zeros_reference_ooms"]:
        assert r["status"] == "inaccurate" and r["checks"][0] == "output" and r["speedup"] is None, r
        assert "its own reference() could not be compared" in r["check_note"] and "4 GiB" in r["check_note"]
    for r in by["zeros_reference_crashes"]:
        assert r["status"] == "inaccurate" and r["checks"][0] == "output" and r["step"] == "own reference", r
        assert "its own reference() crashed the worker" in r["check_note"] and "SIGSEGV" in r["check_note"]
    for r in by["stores_outputs"]:
        if r["mode"] == "forward":
            assert r["status"] == "inaccurate", (r["dtype"], r["causal"], r["status"], r["reason"])
            assert r["max_abs_err"] > 10 * r["accuracy_bound"]
        else:
            assert r["status"] == "unsupported"
    assert all(r["status"] == "ok" for r in by["fast_sdpa"])


@pytest.mark.parametrize(
    ("baseline", "happened"),
    [
        ("baseline_raises_when_timed", "failed during the interleaved timing (RuntimeError"),
        ("baseline_crashes_when_timed", "crashed the worker (worker killed by SIGSEGV) during the interleaved timing"),
        ("baseline_hangs_when_timed", "ran past its budget during the interleaved timing"),
    ],
)
@pytest.mark.slow
def test_a_baseline_that_fails_during_the_interleaved_timing_is_the_baselines_failure(
    tmp_path: Path, baseline: str, happened: str
) -> None:
    """The baseline's first calls succeed, then it raises, kills the worker or hangs while it is
    timed beside the implementation: the implementation stays ``ok`` with its own samples (timed
    alone where the worker died), and ``baseline_note`` says what happened."""
    suite = f"""
[suite]
implementations = ["fast_sdpa"]
baseline = "{baseline}"
[grid]
heads = [1]
seq_len = [64]
head_dim = [16]
dtype = ["float32"]
causal = [false]
[budget]
timeout_s = 8
min_time_s = 0.05
max_time_s = 0.3
"""
    (record,) = run_suite(tmp_path, suite)
    assert record["status"] == "ok" and record["step"] == "done", record
    assert record["speedup"] is None and record["baseline_samples_ms"] == []
    assert len(record["samples_ms"]) >= 5
    assert happened in record["baseline_note"], record["baseline_note"]


@pytest.mark.slow
def test_resume_with_another_suite_exits_2_and_leaves_the_folder_untouched(tmp_path: Path) -> None:
    first = BASELINE_SUITE.format(baseline="", timeout=30).replace("[64, 128]", "[64]")
    run_suite(tmp_path, first)
    out = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = tmp_path / "other.toml"
    other.write_text(first.replace("[64]", "[64, 256]"))
    proc = attnbench("run", str(other), "--plugin", str(PLUGIN), "--out", str(out), "--resume", "--no-report")
    assert proc.returncode == 2
    assert "was started with suite 'suite', not 'other'" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    edited = tmp_path / "suite.toml"  # the same suite, its file edited since the run started
    edited.write_text(first.replace("[64]", "[64, 256]"))
    proc = attnbench("run", str(edited), "--plugin", str(PLUGIN), "--out", str(out), "--resume", "--no-report")
    assert proc.returncode == 2 and "its file has changed since" in proc.stderr, proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_corrupt_run_json_is_a_clear_message(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"suite": {"name": "x", "te')
    proc = attnbench("run", "--resume", "--out", str(out), "--no-report")
    assert proc.returncode == 2
    assert "not valid JSON" in proc.stderr and "Traceback" not in proc.stderr


def test_a_worker_that_never_becomes_ready_is_killed(tmp_path: Path) -> None:
    plugin = tmp_path / "hangs_on_import.py"
    plugin.write_text("import time\ntime.sleep(600)\n")
    pool = WorkerPool([str(plugin)], start_timeout=3.0)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(WorkerStartError, match="did not become ready"):
        pool.get()
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_threads_come_from_the_cpus_this_process_may_use() -> None:
    script = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
        "from attnbench.measure.devices import device, usable_cores;"
        "print(usable_cores(), device('cpu').set_threads(0))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["1", "1"]
    assert usable_cores() == len(os.sched_getaffinity(0))


@pytest.mark.slow
def test_a_plugin_whose_supports_segfaults_is_recorded_crashed_and_the_sweep_goes_on(tmp_path: Path) -> None:
    """availability and supports() are asked of a worker: the crash ends that pair, not the run."""
    both = '["supports_segfaults", "fast_sdpa"]'
    suite = BASELINE_SUITE.format(baseline="", timeout=30).replace('["fast_sdpa"]', both)
    records = run_suite(tmp_path, suite)
    mine = [r for r in records if r["impl"] == "supports_segfaults"]
    assert [r["status"] for r in mine] == ["crashed", "skipped"]
    assert mine[0]["step"] == "supports" and "SIGSEGV" in mine[0]["reason"]
    assert [r["status"] for r in records if r["impl"] == "fast_sdpa"] == ["ok", "ok"]


def test_the_machine_probe_is_never_charged_to_the_implementation() -> None:
    """A decode case moving 1.07 GB a step: its triad probe holds at most 768 MiB (the run's own
    triad), and the memory budget is raised by exactly what the probe holds while the case is
    timed. Before, a probe as large as the case (4.3 GB at batch 8 and 64K tokens) sat inside the
    implementation's 8 GiB and every dense-cache adapter was recorded oom on the paged cache."""
    from attnbench.measure.calibrate import STREAM_BYTES
    from attnbench.measure.case_run import run_case
    from attnbench.measure.memory import vm_size_bytes
    from attnbench.plugins.registry import load_registry
    from attnbench.sweep.suite import parse_suite

    suite = parse_suite(
        """
[suite]
implementations = ["sdpa"]
baseline = ""
[grid]
mode = ["decode"]
batch = [1]
heads = [16]
kv_heads = [16]
dtype = ["float32"]
seq_len = [1]
kv_len = [65536]
head_dim = [128]
causal = [true]
[budget]
memory_gib = 4
min_time_s = 0.01
max_time_s = 0.05
min_repeats = 3
accuracy_rows = 1
""",
        "probe",
    )
    cases = suite.cases()
    assert len(cases) == 1, [c.fields() for c in cases]
    case = cases[0]
    limits: list[int | None] = []

    def record_cap(extra: int | None) -> None:  # what the worker would pass to RLIMIT_AS, not applied here
        limits.append(None if extra is None else vm_size_bytes() + extra)

    job = {"op": "case", "case": case.fields(), "impl": "sdpa", "baseline": "", "budget": suite.budget}
    job["calibration"] = {"gflops": 100.0, "probe_dtype": "float32", "probe_n": 256, "gbps": 20.0}
    record = run_case(load_registry(), job, record_cap)["record"]
    assert record["status"] == "ok", record["reason"]
    assert record["machine_probe"] == f"triad {3 * STREAM_BYTES / 2**20:.0f} MiB"  # capped below the case's 1.07 GB
    raised = [b - a for a, b in itertools.pairwise(limits) if a is not None and b is not None and b > a]
    assert 3 * STREAM_BYTES in raised  # the budget grew by exactly the probe's three arrays


DRIFT_SUITE = """
[suite]
implementations = ["drifting"]
baseline = ""
[budget]
timeout_s = 60
min_time_s = 0.2
max_time_s = 0.5
min_repeats = 5
[grid]
heads = [1]
seq_len = [64]
head_dim = [16]
dtype = ["float32"]
causal = [true, false]
threads = [1]  # a sleeping call on two threads waits for an idle vCPU: see SLOPE_SUITE

[[ratio]]
name = "full at least 1.5x the causal time"
impl = "drifting"
peer_case = { causal = false }
where = { causal = true }
at_least = 1.5
"""


@pytest.mark.slow
def test_a_ratio_between_records_is_timed_again_in_pairs_so_drift_between_them_is_not_blamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The machine is 3x slower while the causal record runs than while the full one does (a
    planted drift): between the two records full ÷ causal reads 0.67; timed alternately in one
    worker after the sweep it reads the 2.0 the two calls cost, and the report says "met"."""
    from attnbench.results.report.data import load_data
    from attnbench.results.report.ratios import declared
    from attnbench.sweep.pairs import read_pairs

    monkeypatch.setenv("ATTNBENCH_TEST_DRIFT", str(tmp_path / "drift.txt"))
    records = run_suite(tmp_path, DRIFT_SUITE)
    by_causal = {r["causal"]: r for r in records}
    assert all(r["status"] == "ok" for r in records)
    across = by_causal[False]["time_ms"] / by_causal[True]["time_ms"]
    assert across == pytest.approx(2 / 3, rel=0.25)  # the drift, as the records saw it

    (pair,) = read_pairs(tmp_path / "run")
    assert pair["impl"] == "drifting" and pair["case"]["causal"] is True and pair["peer_case"]["causal"] is False
    assert len(pair["impl_ms"]) >= 5 and len(pair["peer_ms"]) >= 5
    (outcome,) = declared(load_data([tmp_path / "run"]))
    (figure,) = outcome.figures
    assert figure.value == pytest.approx(2.0, rel=0.2) and figure.note == "paired"
    assert outcome.verdict == "met"

    (tmp_path / "run" / "pairs.jsonl").unlink()  # the same records without the paired timing
    (unpaired,) = declared(load_data([tmp_path / "run"]))
    assert unpaired.verdict == "not met" and unpaired.figures[0].value < 1


SLOPE_SUITE = """
[suite]
implementations = ["sleeps_linearly"]
baseline = ""
[budget]
timeout_s = 60
min_time_s = 0.2
max_time_s = 0.5
min_repeats = 3
[grid]
heads = [1]
seq_len = [64, 128, 256, 512]
head_dim = [16]
dtype = ["float32"]
causal = [false]
# one thread: a call that sleeps and then wakes two OpenMP threads waits, on a VM, for an idle
# vCPU to wake (measured here: SDPA after a 20 ms sleep took 20.6-28.0 ms on two threads, and
# 20.7-21.6 ms on one), noise that is the VM's and not what this test is about
threads = [1]
"""


@pytest.mark.slow
def test_a_group_that_breaks_its_declared_growth_is_timed_in_pairs_and_judged_on_them(tmp_path: Path) -> None:
    """An implementation costing N^1 declares N^0.5, and its suite declares no ratio: after the
    sweep the run times each length alternately with the next shorter one (each step 2x), and the
    scaling table fits the slope to those pairs ("paired"): N^1.0, still above its claim. (That a
    drift between records is not flagged is tested on planted records in test_ratios.py.)"""
    from attnbench.results.report.data import load_data
    from attnbench.results.report.fit import scaling_table
    from attnbench.sweep.pairs import CLAIM, read_pairs

    records = run_suite(tmp_path, SLOPE_SUITE)
    assert [r["seq_len"] for r in records] == [64, 128, 256, 512] and all(r["status"] == "ok" for r in records)
    pairs = read_pairs(tmp_path / "run")
    assert [(p["ratio"], p["case"]["seq_len"], p["peer_case"]["seq_len"]) for p in pairs] == [
        (CLAIM, 128, 64), (CLAIM, 256, 128), (CLAIM, 512, 256)
    ]  # fmt: skip
    for pair in pairs:
        assert statistics.median(pair["impl_ms"]) / statistics.median(pair["peer_ms"]) == pytest.approx(2, rel=0.2)
    data = load_data([tmp_path / "run"])
    (fit,) = scaling_table(data.records, data.declarations, {r.label: r.pairs for r in data.runs}).to_dict("records")
    assert fit["time_fit"].endswith("paired") and fit["time_slope"] == pytest.approx(1.0, abs=0.1)
    assert fit["time_claim"] == 0.5 and fit["time_verdict"] == "above claim"
