"""The benchmark scripts the README quotes run as shown, on small sizes, and print every figure
they are quoted for (a script that rots is a figure nobody can reproduce)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_decode_bandwidth_prints_each_layouts_fraction_of_the_triad_and_paged_over_contiguous() -> None:
    size = ["--tokens", "2048", "--heads", "8", "--kv-heads", "2", "--rounds", "2"]
    out = run("decode_bandwidth.py", *size, "--fused-baseline")
    assert re.search(r"^triad [\d.]+ ms, [\d.]+ GB/s; batch 1, uniform, 2048 tokens$", out, re.M)
    for dtype in ("float32", "bfloat16"):
        for impl in ("split_kv", "sdpa", r"split_kv\[fused\]"):
            assert re.search(rf"^{impl} contiguous {dtype} +[\d.]+ ms +[\d.]+ GB/s +[\d.]+ of the triad$", out, re.M)
            assert re.search(rf"^{impl} paged:16 {dtype} .* of the triad +[\d.]+x contiguous$", out, re.M)


def test_packed_documents_prints_packed_against_one_by_one_and_the_dense_mask() -> None:
    out = run("packed_documents.py", "--tokens", "1024", "--impls", "chunked", "--rounds", "2")
    assert "longtail:8 in 1024 tokens: lengths [" in out
    assert re.search(r"^chunked: packed / one by one = [\d.]+; sdpa's dense mask / packed = [\d.]+$", out, re.M)


def test_sdpa_backward_rounding_reproduces_the_kernels_value_gradient_by_rounding_per_block() -> None:
    """The README's explanation of the criterion's flags on SDPA's backward: PyTorch's CPU flash
    kernel keeps its gradient sums in the inputs' dtype, rounded after each block of 256 query
    rows. The script's emulation of that must land within about an ulp of SDPA's ``dv``, and both
    many times the plain computation's error (if PyTorch starts accumulating in float32, this
    fails and the README's account is out of date)."""
    out = run("sdpa_backward_rounding.py", "--seq-len", "4096", "--seeds", "1", "--dtypes", "float16")
    found = re.search(r"sdpa / plain = ([\d.]+); sdpa vs rounded per block [\d.e-]+ \(([\d.]+) ulp", out)
    assert found, out
    assert float(found[1]) > 2.0  # FlashAttention's bound allows twice the plain error
    assert float(found[2]) <= 2.0


TINY_SUITE = """
[suite]
name = "tiny"
implementations = ["naive", "chunked", "sdpa"]
baseline = "sdpa"
[budget]
min_time_s = 0.02
max_time_s = 0.05
min_repeats = 3
[[grid]]
heads = [2]
head_dim = [16]
seq_len = [128]
dtype = ["float32"]
causal = [true]
"""


def test_normalised_vs_alone_sets_each_normalised_time_beside_the_same_pair_timed_alone(tmp_path: Path) -> None:
    """The script behind the README's "normalised time against the time alone" figure: the second
    run has no baseline, and each printed figure is re-derived here from the two runs' records."""
    import json
    import statistics

    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY_SUITE)
    out = run("normalised_vs_alone.py", str(suite), "--out", str(tmp_path / "runs"))
    read = {
        name: {
            r["impl"]: r for r in map(json.loads, (tmp_path / "runs" / name / "results.jsonl").read_text().splitlines())
        }
        for name in ("interleaved", "alone")
    }
    assert all(r["baseline"] == "" and not r["baseline_samples_ms"] for r in read["alone"].values())
    inter = read["interleaved"]
    beside = {n: r["baseline_time_ms"] if n != "sdpa" else r["time_ms"] for n, r in inter.items()}
    middle = statistics.median(beside.values())
    printed = re.findall(r"^(\w+) +N=128 .*? ([\d.]+)ms +([\d.]+)ms +([\d.]+) ", out, re.M)
    assert sorted(name for name, *_ in printed) == ["chunked", "naive", "sdpa"], out
    for name, normalised, alone, ratio in printed:
        expected = inter[name]["time_ms"] / beside[name] * middle
        assert abs(float(normalised) - expected) <= 0.0006 + 1e-3 * expected, (name, normalised, expected)
        alone_ms = read["alone"][name]["time_ms"]
        assert abs(float(alone) - alone_ms) <= 0.0006 + 1e-3 * alone_ms
        assert abs(float(ratio) - expected / alone_ms) <= 0.0006
    assert re.search(r"^\d of 3 pairs: normalised time within 10% of the time alone$", out, re.M)

    # --repeat's figures on copies of the two runs, every time 1.2x slower in the copies: each
    # figure is the median of its runs and the spread alone is 1.2 (no new run needed)
    import importlib.util

    spec = importlib.util.spec_from_file_location("nva", ROOT / "benchmarks" / "normalised_vs_alone.py")
    assert spec and spec.loader
    nva = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nva)
    runs = tmp_path / "runs"
    for name in ("interleaved", "alone"):
        copy = runs / f"{name}-2"
        copy.mkdir()
        rows = [json.loads(line) for line in (runs / name / "results.jsonl").read_text().splitlines()]
        for r in rows:
            for key in ("time_ms", "baseline_time_ms"):
                r[key] = r[key] * 1.2 if isinstance(r.get(key), float) else r.get(key)
            for key in ("samples_ms", "baseline_samples_ms"):
                r[key] = [x * 1.2 for x in r.get(key) or []]
        (copy / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (copy / "run.json").write_text((runs / name / "run.json").read_text())
    one = {r["impl"]: r for r in nva.pairs([runs / "interleaved"], [runs / "alone"])}
    both = nva.pairs([runs / "interleaved", runs / "interleaved-2"], [runs / "alone", runs / "alone-2"])
    two = {r["impl"]: r for r in both}
    assert sorted(two) == ["chunked", "naive", "sdpa"]
    for name, row in two.items():
        assert row["alone_ms"] == pytest.approx(one[name]["alone_ms"] * 1.1, rel=1e-9)
        assert row["normalised_ms"] == pytest.approx(one[name]["normalised_ms"] * 1.1, rel=1e-6)
        assert row["alone_spread"] == pytest.approx(1.2, rel=1e-9) and one[name]["alone_spread"] == 1.0


def test_neighbour_times_one_implementation_alone_and_beside_its_baseline_then_in_fresh_processes() -> None:
    """The script behind the README's "not because of its neighbour" figures: both ways and their
    ratio, then one line per fresh process and their range, each figure consistent with the rest."""
    out = run("neighbour.py", "sliding_window", "--seq-len", "256", "--window", "64", "--blocks", "2",
              "--calls", "3", "--processes", "2")  # fmt: skip
    ways = dict(re.findall(r"^sliding_window (alone|beside sdpa) +([\d.]+) ms", out, re.M))
    assert set(ways) == {"alone", "beside sdpa"}, out
    (ratio,) = re.findall(r"^beside sdpa / alone: ([\d.]+)$", out, re.M)
    beside, alone = float(ways["beside sdpa"]), float(ways["alone"])
    rounding = 0.0005 * (1 / alone + beside / alone**2)  # the medians are printed to 0.001 ms
    assert abs(float(ratio) - beside / alone) <= 0.0006 + rounding, out
    each = re.findall(r"^process \d: median ([\d.]+) ms, fastest ([\d.]+) ms$", out, re.M)
    procs = [(float(m), float(f)) for m, f in each]
    assert len(procs) == 2 and all(fastest <= median for median, fastest in procs), out
    summary = r"^2 processes alone: medians ([\d.]+)-([\d.]+) ms .* fastest calls ([\d.]+)-([\d.]+) ms"
    (line,) = re.findall(summary, out, re.M)
    assert float(line[0]) == min(m for m, _ in procs) and float(line[1]) == max(m for m, _ in procs)
    assert float(line[2]) == min(f for _, f in procs) and float(line[3]) == max(f for _, f in procs)
