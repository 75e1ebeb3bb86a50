"""What real runs on this project's 2-core machine recorded (``tests/data/recorded/``): the
figures the trust issue asked for, checked on the output attnbench actually wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from attnbench.records import read_records

RECORDED = Path(__file__).parent / "data" / "recorded"


def records(name: str) -> list[dict[str, Any]]:
    return read_records(RECORDED / name / "results.jsonl")


def test_quick_no_record_exceeds_the_peak_it_is_set_against() -> None:
    """Recorded while other runs and the test suite shared the two cores."""
    ok = [r for r in records("quick") if r["status"] == "ok"]
    assert len(ok) >= 60
    for r in ok:
        assert r["peak_fraction"] is not None and 0 < r["peak_fraction"] <= 1.0, (r["impl"], r["peak_fraction"])
        assert r["gflops"] <= r["peak_gflops"]


def test_quick_counts_linears_own_work() -> None:
    """linear's FLOPs are its own products, not softmax attention's: at N=2048 its count is a
    small fraction of the dense count, and it grows linearly with N."""
    linear = {(r["seq_len"], r["causal"]): r for r in records("quick") if r["impl"] == "linear" and r["status"] == "ok"}
    assert {n for n, _ in linear} == {512, 1024, 2048}
    for causal in (False, True):
        short, long = linear[(512, causal)], linear[(2048, causal)]
        assert long["flops"] == pytest.approx(4 * short["flops"], rel=0.05)  # linear in N
        assert long["dense_flops"] == pytest.approx(16 * short["dense_flops"], rel=0.05)  # softmax's: N²
        assert long["flops"] < long["dense_flops"] / 10


def test_quick_was_measured_on_the_machine_it_names() -> None:
    meta = json.loads((RECORDED / "quick" / "run.json").read_text())
    assert meta["suite"]["name"] == "quick" and meta["machine"]["cores"] == 2 and meta["calibration"]
