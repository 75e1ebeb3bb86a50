"""The shipped smoke suite through the real command line, `attnbench list`, and the
pytest-benchmark route."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import attnbench

from attnbench.measure.records import read_records
from attnbench.plugins.registry import load_registry

ROOT = Path(__file__).resolve().parent.parent
BUILTINS = [
    "naive",
    "chunked",
    "sliding_window",
    "block_sparse",
    "linear",
    "linear_quadratic",
    "sdpa",
    "xformers",
    "flex",
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("smoke") / "run"
    proc = attnbench("run", "smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out.parent / "stdout.txt").write_text(proc.stdout)
    return out, read_records(out / "results.jsonl")


def test_list_json_names_every_builtin_with_availability() -> None:
    proc = attnbench("list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    for name in BUILTINS:
        assert name in rows
        assert {"name", "exact", "available", "reason"} <= set(rows[name])
        assert rows[name]["available"] or rows[name]["reason"]
    assert any(name.startswith("sdpa_") for name in rows)
    assert rows["linear"]["exact"] is False


def test_list_table_prints() -> None:
    proc = attnbench("list")
    assert proc.returncode == 0
    assert "attention implementations" in proc.stdout
    for name in ("naive", "chunked", "linear", "flex"):
        assert name in proc.stdout
    assert "xformers unavailable:" in proc.stdout.replace("\n", " ")


@pytest.mark.slow
def test_smoke_gives_every_available_builtin_an_ok_case(smoke: tuple[Path, list[dict[str, Any]]]) -> None:
    _, records = smoke
    registry = load_registry()
    available = [n for n, impl in registry.items() if impl.available().ok and impl.source == "built-in"]
    ok = {r["impl"] for r in records if r["status"] == "ok"}
    assert set(available) <= ok, f"no ok case for {sorted(set(available) - ok)}"
    windowed = {r["impl"] for r in records if r["status"] == "ok" and r["window"]}
    sparse = {r["impl"] for r in records if r["status"] == "ok" and r["layout"] != "dense"}
    assert "sliding_window" in windowed
    assert "block_sparse" in sparse


@pytest.mark.slow
def test_no_ok_record_of_a_real_run_exceeds_its_peak_or_its_bandwidth(
    smoke: tuple[Path, list[dict[str, Any]]],
) -> None:
    """Every ok record of this live run, as written and as read back by today's formulas, stays
    at or under the ceiling it is set against, compute-bound (prefill) and memory-bound (decode)."""
    from attnbench import load_results

    out, records = smoke
    read_back = load_results(out).to_dict("records")
    ok = [r for r in records + read_back if r["status"] == "ok"]
    compute = [r for r in ok if r["peak_fraction"] is not None and r["peak_fraction"] == r["peak_fraction"]]
    memory = [
        r for r in ok if r["bandwidth_fraction"] is not None and r["bandwidth_fraction"] == r["bandwidth_fraction"]
    ]
    assert len(compute) >= 20 and any(r["mode"] == "decode" for r in memory)
    for r in compute:
        assert 0 < r["peak_fraction"] <= 1.0 and r["gflops"] <= r["peak_gflops"], (r["impl"], r["peak_fraction"])
    for r in memory:
        assert 0 < r["bandwidth_fraction"] <= 1.0 and r["gbps"] <= r["peak_gbps"], (r["impl"], r["bandwidth_fraction"])


@pytest.mark.slow
def test_a_run_reports_its_own_cost(smoke: tuple[Path, list[dict[str, Any]]]) -> None:
    """run.json, the last progress line and the report's header say where the wall time went; the
    parts add up to the wall, and the timed part holds at least every timed sample of the records."""
    from attnbench.sweep.cost import PARTS, efficiency

    out, records = smoke
    (session,) = json.loads((out / "run.json").read_text())["cost"]
    assert set(PARTS) | {"wall_s"} == set(session)
    assert all(v >= 0 for v in session.values()), session
    parts = sum(v for k, v in session.items() if k != "wall_s")
    assert session["other_s"] > 0 and parts == pytest.approx(session["wall_s"], rel=1e-6), session
    sampled = sum(sum(r["samples_ms"]) * (r["inner"] or 1) / 1000 for r in records if r["samples_ms"])
    assert session["timed_implementations_s"] == pytest.approx(sampled, rel=1e-6), (sampled, session)
    assert session["timed_baselines_s"] > 0 and session["start_s"] > 0 and session["reference_s"] > 0
    assert sum(r["elapsed_s"] or 0 for r in records) <= session["wall_s"]
    eff = efficiency(session)
    assert eff is not None and 0 < eff < 1
    last = [line for line in (out.parent / "stdout.txt").read_text().splitlines() if line.startswith("cost: ")]
    assert last and f"{session['wall_s']:.0f} s of wall" in last[-1] and f"efficiency {eff:.2f}" in last[-1]
    # the report was written before its own time was known: its header reads the cost up to it
    before = efficiency({**session, "wall_s": session["wall_s"] - session["report_s"]})
    assert session["report_s"] > 0 and before is not None
    assert f"efficiency {before:.2f}" in (out / "report.md").read_text()
    assert f"efficiency {before:.2f}" in (out / "report.html").read_text()


@pytest.mark.slow
def test_smoke_records_unavailable_with_reasons(smoke: tuple[Path, list[dict[str, Any]]]) -> None:
    _, records = smoke
    for r in records:
        if r["status"] in ("unavailable", "unsupported", "skipped", "error", "oom", "timeout", "crashed"):
            assert r["reason"], r


@pytest.mark.slow
def test_run_writes_its_report(smoke: tuple[Path, list[dict[str, Any]]]) -> None:
    out, _ = smoke
    assert (out / "report.html").stat().st_size > 10_000
    assert (out / "report.md").exists()
    assert list((out / "plots").glob("*.png"))


@pytest.mark.slow
def test_results_load_into_a_dataframe(smoke: tuple[Path, list[dict[str, Any]]]) -> None:
    from attnbench import load_results

    out, records = smoke
    frame = load_results(out)
    assert len(frame) == len(records)
    assert {"impl", "status", "time_ms", "seq_len", "peak_mem_bytes", "speedup"} <= set(frame.columns)


@pytest.mark.slow
def test_pytest_benchmark_route_and_its_report(tmp_path: Path) -> None:
    suite = tmp_path / "tiny.toml"
    suite.write_text(
        '[suite]\nimplementations = ["sdpa", "naive", "sliding_window"]\n'
        '[grid]\nheads = [2]\nseq_len = [128]\nhead_dim = [16]\ndtype = ["float32"]\ncausal = [true]\n'
    )
    out_json = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}  # xdist would disable it
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "benchmarks"), "-q", "-p", "no:cacheprovider",
         f"--attnbench-suite={suite}", f"--benchmark-json={out_json}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "2 passed, 1 skipped" in proc.stdout  # sliding_window needs a window
    data = json.loads(out_json.read_text())
    names = {b["extra_info"]["impl"] for b in data["benchmarks"]}
    assert names == {"sdpa", "naive"}
    report = attnbench("report", str(out_json), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "report.html").exists()
