"""Declared ratios ([[ratio]] in a suite): validated with the suite, evaluated on the run's own
records, and a bound is met only when every case it covers ran and meets it. Each test plants the
defect the ratio is there to catch (a kernel 5% under its bound, an N^1.3 slope, a memory ratio
of 1/15 against 1/16, a peer that failed) on generated records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from attnbench.cli import main
from attnbench.measure.records import Record, RecordWriter
from attnbench.results.report.data import load_data
from attnbench.results.report.ratios import declared
from attnbench.sweep.suite import SuiteError, parse_suite

GRID = """
[suite]
implementations = ["ours", "peer"]
baseline = "peer"
[grid]
seq_len = [1024, 2048, 4096, 8192]
dtype = ["float32"]
causal = [false, true]
"""


def ratio(body: str) -> str:
    return GRID + "[[ratio]]\n" + body


def run_folder(tmp_path: Path, text: str, records: list[Record]) -> Path:
    folder = tmp_path / "run"
    folder.mkdir(parents=True)
    info = {"suite": {"name": "r", "baseline": "peer", "text": text}, "generated": True}
    (folder / "run.json").write_text(json.dumps(info))
    with RecordWriter(folder / "results.jsonl") as writer:
        for record in records:
            writer.write(record)
    return folder


def rec(impl: str, n: int, ms: float, causal: bool = False, **extra: Any) -> Record:
    case = {"seq_len": n, "heads": 8, "head_dim": 64, "causal": causal, "dtype": "float32"}
    samples = [ms * f for f in (0.98, 0.99, 1.0, 1.01, 1.02)]
    return Record(impl, "ok", case=case, exact=True, checks=["output"], time_ms=ms, samples_ms=samples, **extra)


def outcomes(tmp_path: Path, text: str, records: list[Record]) -> list[Any]:
    return declared(load_data([run_folder(tmp_path, text, records)]))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('impl = "ours"\npeer = "peer"\nlenght = 3\n', "unknown key 'lenght'"),
        ('peer = "peer"\n', r"ratio\[0\]\.impl is required"),
        ('impl = "ours"\npeer = "nobody"\n', r"ratio\[0\]\.peer = 'nobody'"),
        (
            'impl = "ours"\npeer = "peer"\nmetric = "joy"\n',
            r"metric = 'joy': expected one of speed, memory, slope, band",
        ),
        ('impl = "ours"\npeer = "peer"\nwhere = { sequence = 4 }\n', r"where\.sequence: not a case field"),
        ('impl = "ours"\npeer = "peer"\nwhere = { seq_len = "long" }\n', r"where\.seq_len has 'long'"),
        ('impl = "ours"\npeer = "peer"\nwhere = { causal = 1 }\n', r"where\.causal has 1"),
        ('impl = "ours"\npeer_case = { causal = [false] }\n', r"peer_case\.causal = \[False\]: expected one value"),
        ('impl = "ours"\n', "the implementation against itself is 1"),
        ('impl = "ours"\npeer = "peer"\nat_least = 1\nat_most = 2\n', "at_least or at_most, not both"),
        ('impl = "ours"\npeer = "peer"\nat_least = -1\n', r"at_least = -1: expected a positive number"),
    ],
)
def test_a_wrong_ratio_is_a_suite_error_naming_its_key(body: str, message: str) -> None:
    with pytest.raises(SuiteError, match=message):
        parse_suite(ratio(body), "r.toml", ["ours", "peer"])


def test_a_kernel_5_percent_under_its_bound_is_not_met(tmp_path: Path) -> None:
    body = 'impl = "ours"\npeer = "peer"\nwhere = { causal = false }\nat_least = 0.85\n'
    lengths = [1024, 2048, 4096, 8192]
    good = [r for n in lengths for r in (rec("ours", n, 10.0 * n / 1024), rec("peer", n, 8.6 * n / 1024))]
    (met,) = outcomes(tmp_path / "a", ratio(body), good)
    assert met.verdict == "met" and [f.at for f in met.figures] == [f"N={n}" for n in lengths]
    assert all(f.value == pytest.approx(0.86) and f.low < 0.86 < f.high for f in met.figures)
    slow = [*good[:-2], rec("ours", 8192, 84.0), rec("peer", 8192, 68.8)]
    (missed,) = outcomes(tmp_path / "b", ratio(body), slow)  # ours 5% slower at 8K: 0.819
    assert missed.verdict == "not met"
    assert [f.holds for f in missed.figures] == [True, True, True, False]
    assert missed.figures[-1].value == pytest.approx(68.8 / 84.0)


def test_against_the_interleaved_baseline_the_drift_between_pairs_does_not_count(tmp_path: Path) -> None:
    """The peer's own record ran on a quiet machine (50 ms), ours on a loaded one beside the peer
    (110 ms against the peer's 100 ms beside it): the ratio is 0.91, not 0.45."""
    body = 'impl = "ours"\npeer = "peer"\nat_least = 0.85\nwhere = { seq_len = 1024, causal = false }\n'
    beside = [100.0, 99.0, 101.0, 100.5, 99.5]
    records = [
        rec("peer", 1024, 50.0),
        rec("ours", 1024, 110.0, baseline="peer", baseline_time_ms=100.0, baseline_samples_ms=beside),
    ]
    (o,) = outcomes(tmp_path, ratio(body), records)
    assert o.figures[0].value == pytest.approx(100.0 / 110.0) and o.figures[0].note == "interleaved"
    assert o.verdict == "met"


def test_a_slope_of_1_3_breaks_a_bound_of_1_1(tmp_path: Path) -> None:
    body = 'impl = "ours"\nmetric = "slope"\nat_most = 1.1\n'
    lengths = [1024, 2048, 4096, 8192]
    linear = [rec("ours", n, 0.01 * n, causal=c) for n in lengths for c in (False, True)]
    (o,) = outcomes(tmp_path / "a", ratio(body), linear)
    assert o.verdict == "met" and [f.at for f in o.figures] == ["full", "causal"]
    assert all(f.value == pytest.approx(1.0, abs=0.03) for f in o.figures)
    steeper = [rec("ours", n, 0.01 * n ** (1.3 if c else 1.0), causal=c) for n in lengths for c in (False, True)]
    (o,) = outcomes(tmp_path / "b", ratio(body), steeper)
    assert o.verdict == "not met" and [f.holds for f in o.figures] == [True, False]
    assert o.figures[1].value == pytest.approx(1.3, abs=0.03)


def test_memory_of_one_fifteenth_breaks_one_sixteenth(tmp_path: Path) -> None:
    body = 'impl = "ours"\npeer = "peer"\nmetric = "memory"\nat_most = 0.0625\nwhere = { seq_len = 8192 }\n'
    for share, verdict in ((1 / 17, "met"), (1 / 15, "not met")):
        gib = 2**30
        records = [rec("ours", 8192, 10.0, causal=c, peak_mem_bytes=int(16 * gib * share)) for c in (False, True)] + [
            rec("peer", 8192, 10.0, causal=c, peak_mem_bytes=16 * gib) for c in (False, True)
        ]
        (o,) = outcomes(tmp_path / verdict.replace(" ", "_"), ratio(body), records)
        assert o.verdict == verdict and o.figures[0].value == pytest.approx(share, rel=1e-6)
        assert "MiB ÷ 16384 MiB" in o.figures[0].note


def test_a_decoder_5_percent_under_its_bandwidth_bound_is_not_met(tmp_path: Path) -> None:
    """The bandwidth metric reads each record's fraction of the machine's triad (no peer): 0.63
    meets 0.6, 0.57 (5% under) does not, and a length that never ran leaves it unmet."""
    body = 'impl = "ours"\nmetric = "bandwidth"\nat_least = 0.6\nwhere = { causal = false }\n'

    def decoder(n: int, fraction: float) -> Record:
        """A decode record whose bytes over its median time (10 ms) are ``fraction`` of the triad
        timed beside it (20 GB/s): the figures are derived from these when the run is read."""
        case = {"mode": "decode", "seq_len": 1, "kv_len": n, "heads": 8, "head_dim": 64, "causal": False}
        samples = [10.0 * f for f in (0.98, 0.99, 1.0, 1.01, 1.02)]
        triad = {"machine_probe_ms": [5.0, 5.0, 5.0], "machine_probe_work": 20e9 * 5e-3}
        return Record("ours", "ok", case=case, exact=True, checks=["output"], time_ms=10.0, samples_ms=samples,
                      bytes=fraction * 20e9 * 1e-2, **triad)  # fmt: skip

    (met,) = outcomes(tmp_path / "a", ratio(body), [decoder(1024, 0.63), decoder(2048, 0.65)])
    assert met.verdict == "met" and [f.value for f in met.figures] == pytest.approx([0.63, 0.65])
    assert all(f.low < f.value < f.high for f in met.figures)  # the time's quartiles
    assert met.figures[0].note == "12.6 GB/s of 20"
    (missed,) = outcomes(tmp_path / "b", ratio(body), [decoder(1024, 0.63), decoder(2048, 0.57)])
    assert missed.verdict == "not met" and [f.holds for f in missed.figures] == [True, False]
    wanted = body.replace("causal = false", "causal = false, kv_len = [1024, 4096]")
    (absent,) = outcomes(tmp_path / "c", ratio(wanted), [decoder(1024, 0.63)])
    assert absent.verdict == "not met" and absent.missing == ["4096 cached tokens: no ours record"]


def test_a_peer_that_failed_or_a_length_that_never_ran_is_not_met(tmp_path: Path) -> None:
    body = 'impl = "ours"\npeer = "peer"\nwhere = { causal = false, seq_len = [1024, 2048, 4096] }\nat_least = 0.5\n'
    records = [rec("ours", 1024, 1.0), rec("peer", 1024, 1.0), rec("ours", 2048, 4.0)]
    records.append(Record("peer", "oom", case=records[-1].case, reason="out of memory"))
    (o,) = outcomes(tmp_path, ratio(body), records)
    assert o.verdict == "not met" and len(o.figures) == 1 and o.figures[0].holds
    assert o.missing == ["N=4096: no ours record", "N=2048: peer oom"]


def test_the_report_states_each_ratio_its_spread_and_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = (
        'name = "ours causal costs half of full"\nimpl = "ours"\npeer_case = { causal = false }\n'
        "where = { causal = true }\nat_least = 1.7\n"
    )
    records = [rec("ours", n, n / 1024, causal=False) for n in (1024, 2048)]
    records += [rec("ours", 1024, 0.5, causal=True), rec("ours", 2048, 1.5, causal=True)]  # 2.0 and 1.33
    folder = run_folder(tmp_path, ratio(body), records)
    assert main(["report", str(folder), "--out", str(tmp_path / "report")]) == 0
    said = capsys.readouterr().out
    assert "ratios: 1 not met\n" in said
    assert "  not met: ours causal costs half of full (≥ 1.7; measured 1.33–2)\n" in said
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "Ratios the suite declares" in page and "ours causal costs half of full" in page
    assert 'class="verdict v-not-met"' in page
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "| ours causal costs half of full | ≥ 1.7 | **not met** | N=1024: **2** [" in md
    assert "N=2048: **1.33** [" in md and "✗" in md
    table = pd.read_csv(tmp_path / "report" / "tables" / "ratios.csv")
    assert list(table["holds"]) == [True, False] and set(table["verdict"]) == {"not met"}


def test_a_ratio_across_dtypes_names_the_machines_rate_in_each(tmp_path: Path) -> None:
    """bf16 against float32 on a CPU without bf16 matrix units: the figure comes with the rate the
    calibration measured for products in each dtype (not its overall peak, which is float32's)."""
    body = 'impl = "ours"\npeer_case = { dtype = "float32" }\nwhere = { dtype = "bfloat16" }\nat_least = 1.5\n'
    bf16 = Record(
        "ours", "ok", case={**rec("ours", 1024, 1.0).case, "dtype": "bfloat16"}, time_ms=1.1, checks=["output"]
    )
    folder = run_folder(tmp_path, ratio(body), [rec("ours", 1024, 1.0), bf16])
    info = json.loads((folder / "run.json").read_text())
    info["calibration"] = [
        {"device": "cpu", "dtype": "bfloat16", "gflops": 170.0, "rates": {"bfloat16": {"256": 1.4, "512": 1.2},
                                                                          "float32": {"2048": 170.0}}},
        {"device": "cpu", "dtype": "float32", "gflops": 168.0, "rates": {"float32": {"2048": 168.0}}},
    ]  # fmt: skip
    (folder / "run.json").write_text(json.dumps(info))
    (o,) = declared(load_data([folder]))
    assert o.verdict == "not met" and o.figures[0].value == pytest.approx(1 / 1.1)
    assert o.peaks == "this machine's measured matrix-product rate: 1.4 GFLOP/s in bfloat16, 170 in float32 (0.00824×)"


def test_pairs_are_planned_only_where_the_records_were_not_timed_together() -> None:
    """A bounded speed ratio gets a paired timing per case whose peer record is ok and was not
    its interleaved baseline; an unbounded ratio, another thread count or a failed peer none."""
    from attnbench.sweep.pairs import plan
    from attnbench.sweep.ratios import parse_ratios

    def rec(impl: str, status: str = "ok", **case: Any) -> dict[str, Any]:
        return {"impl": impl, "status": status, "seq_len": 1024, "causal": False, "threads": 0, **case}

    ratios = parse_ratios(
        [
            {"name": "vs sdpa", "impl": "chunked", "peer": "sdpa", "at_least": 0.85},
            {"name": "full/causal", "impl": "chunked", "peer_case": {"causal": False}, "where": {"causal": [True]},
             "at_least": 1.7},
            {"name": "shown", "impl": "chunked", "peer": "flex"},
            {"name": "threads", "impl": "chunked", "peer_case": {"threads": 1}, "where": {"threads": [2]},
             "at_least": 1.0},
        ],
        "test",
    )  # fmt: skip
    records = [
        rec("chunked", baseline="sdpa", baseline_samples_ms=[1.0]),  # timed beside SDPA already
        rec("chunked", seq_len=2048),  # SDPA not its baseline: paired
        rec("sdpa"),
        rec("sdpa", seq_len=2048),
        rec("flex"),
        rec("chunked", causal=True),  # paired with chunked full
        rec("chunked", causal=True, seq_len=2048),  # paired with the full record at 2048
        rec("chunked", "oom", causal=False, seq_len=4096),
        rec("chunked", causal=True, seq_len=4096),  # its full peer ran out of memory: none
        rec("chunked", threads=2),
        rec("chunked", threads=1),
    ]
    planned = [(p.ratio, p.case["seq_len"], p.case["causal"]) for p in plan(ratios, records)]
    assert planned == [("vs sdpa", 2048, False), ("full/causal", 1024, True), ("full/causal", 2048, True)]


def test_a_bounded_slope_pairs_each_length_with_the_next_shorter_ok_one_in_its_group() -> None:
    """Neighbouring lengths of one group (here: per dtype and key length) are paired, longer
    against shorter; a length whose record failed drops out of the chain; a group with fewer
    lengths than a fit needs, and an unbounded slope, get no pairs."""
    from attnbench.results.report.fit import MIN_POINTS
    from attnbench.sweep.pairs import MIN_LENGTHS, plan
    from attnbench.sweep.ratios import parse_ratios

    def rec(n: int, dtype: str = "float32", status: str = "ok") -> dict[str, Any]:
        return {"impl": "linear", "status": status, "seq_len": n, "kv_len": n, "dtype": dtype, "threads": 0}

    ratios = parse_ratios(
        [
            {"name": "bounded", "impl": "linear", "metric": "slope", "at_most": 1.1},
            {"name": "shown", "impl": "linear", "metric": "slope"},
        ],
        "test",
    )
    records = [rec(4096), rec(16384), rec(8192), rec(32768, status="timeout"), rec(65536)]
    records += [rec(4096, "bfloat16"), rec(8192, "bfloat16"), rec(16384, "bfloat16", status="timeout")]
    records += [{**rec(n, "float16"), "kv_len": 1024} for n in (4096, 8192, 16384)]  # a fixed key length
    records += [{**rec(16384, "float16"), "kv_len": 2048}, rec(4096, "float16"), rec(8192, "float16")]
    planned = [(p.ratio, p.case["dtype"], p.case["seq_len"], p.peer_case["seq_len"]) for p in plan(ratios, records)]
    assert planned == [
        ("bounded", "float32", 8192, 4096),
        ("bounded", "float32", 16384, 8192),
        ("bounded", "float32", 65536, 16384),  # 32K timed out: 16K is the length before 64K
        ("bounded", "float16", 8192, 4096),  # Nk = 1024 against Nq: never chained to Nk = Nq or 2048
        ("bounded", "float16", 16384, 8192),
    ]  # bfloat16 and float16 with Nk = Nq have two ok lengths: no fitted slope, nothing to pair
    assert MIN_LENGTHS == MIN_POINTS


def test_a_pair_is_timed_only_on_the_host_its_two_records_ran_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records from two hosts (a merged or Ray run) are never paired across them; a pair whose
    records ran elsewhere is not timed here (a resume on that host will), and a paired row timed
    on another host than its records is not used by the report."""
    import json
    import socket

    from attnbench.sweep.pairs import by_key, plan, read_pairs, run_pairs
    from attnbench.sweep.ratios import parse_ratios

    def rec(impl: str, host: str, n: int = 1024) -> dict[str, Any]:
        return {"impl": impl, "status": "ok", "seq_len": n, "kv_len": n, "causal": False, "threads": 0, "host": host}

    ratios = parse_ratios(
        [
            {"name": "vs flex", "impl": "chunked", "peer": "flex", "at_least": 1.0},
            {"name": "slope", "impl": "chunked", "metric": "slope", "at_most": 1.1},
        ],
        "test",
    )
    records = [rec("chunked", "a"), rec("flex", "b"), rec("chunked", "a", 2048), rec("flex", "a", 2048)]
    records += [rec("chunked", "b", 4096)]  # a length from host b: the slope's chain would cross machines
    planned = [(p.ratio, p.case["seq_len"], p.peer_case["seq_len"], p.host) for p in plan(ratios, records)]
    assert planned == [("vs flex", 2048, 2048, "a")]
    records[-1] = rec("chunked", "a", 4096)  # recorded again on host a: the last record counts
    planned = [(p.ratio, p.case["seq_len"], p.peer_case["seq_len"], p.host) for p in plan(ratios, records)]
    assert planned == [("vs flex", 2048, 2048, "a"), ("slope", 2048, 1024, "a"), ("slope", 4096, 2048, "a")]

    elsewhere = "not-" + socket.gethostname()
    (tmp_path / "results.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in [rec("chunked", elsewhere), rec("flex", elsewhere)])
    )

    def no_pool(device: str) -> Any:
        raise AssertionError("a pair from another host must not reach a worker")

    run_pairs(tmp_path, ratios[:1], {"timeout_s": 1.0, "max_time_s": 1.0}, no_pool)
    assert read_pairs(tmp_path) == []
    assert f"not timed: its records ran on {elsewhere}" in capsys.readouterr().out

    row = {"ratio": "vs flex", "impl": "chunked", "case": rec("chunked", "a"), "impl_ms": [1.0], "peer_ms": [2.0]}
    assert len(by_key([{**row, "host": "a", "timed_on": "a"}, {**row, "ratio": "other", "host": "a"}])) == 2
    assert by_key([{**row, "host": "a", "timed_on": "b"}]) == {}


def test_a_chained_slope_uses_only_pairs_timed_against_the_length_before_it(tmp_path: Path) -> None:
    """The records drift (3x slower at 2K and 8K: fitted to them the slope reads 1.31); pairs of
    neighbouring lengths, each 2x, chain to 1.0 with an interval that widens with the pairs'
    noise; a pair timed against another length than the one before it (a stale row) breaks the
    chain, and the slope falls back to the records; a group whose every record failed is listed."""
    from attnbench.measure.records import read_records
    from attnbench.sweep.pairs import case_of

    body = 'name = "slope"\nimpl = "ours"\nmetric = "slope"\nat_most = 1.1\nwhere = { causal = false }\n'
    lengths = [1024, 2048, 4096, 8192]
    drift = [rec("ours", n, 0.01 * n * (3 if i % 2 else 1)) for i, n in enumerate(lengths)]
    failed = [Record("ours", "timeout", case={"seq_len": n, "heads": 8, "head_dim": 64, "dtype": "bfloat16"})
              for n in lengths]  # fmt: skip

    def folder(name: str, spread: float, peers: list[int]) -> Path:
        out = run_folder(tmp_path / name, ratio(body), drift + failed)
        cases = {r["seq_len"]: case_of(r) for r in read_records(out / "results.jsonl") if r["dtype"] == "float32"}
        rows = []
        for n, shorter in zip(lengths[1:], peers, strict=True):
            ms = [0.01 * n * (1 + spread * f) for f in (-1, -0.5, 0, 0.5, 1)]
            peer_ms = [x * shorter / n for x in ms[::-1]]
            rows.append({"ratio": "slope", "impl": "ours", "case": cases[n], "peer": "ours",
                         "peer_case": cases[shorter], "impl_ms": ms, "peer_ms": peer_ms})  # fmt: skip
        (out / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return out

    figures, folders = {}, {}
    for name, spread, peers in (("tight", 0.01, [1024, 2048, 4096]), ("noisy", 0.2, [1024, 2048, 4096])):
        folders[name] = folder(name, spread, peers)
        (o,) = declared(load_data([folders[name]]))
        (figures[name],) = o.figures
        assert o.verdict == "not met" and "bf16: 0 lengths measured, a fitted slope needs 3" in o.missing
    for f in figures.values():
        assert f.note.startswith("paired") and f.value == pytest.approx(1.0, abs=0.01) and f.low <= 1.0 <= f.high
    assert figures["noisy"].high - figures["noisy"].low > 3 * (figures["tight"].high - figures["tight"].low)
    assert main(["report", str(folders["tight"]), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")  # the reader sees how it was timed
    assert "fp32: **1** [" in md and "(paired, N 1024–8192, 4 lengths" in md
    assert '<small class="fnote">paired, N 1024–8192' in (tmp_path / "report" / "report.html").read_text("utf-8")

    (stale,) = declared(load_data([folder("stale", 0.01, [1024, 2048, 2048])]))  # 8K paired against 2K
    (figure,) = stale.figures
    assert not figure.note.startswith("paired") and figure.value == pytest.approx(1.31, abs=0.05)


def test_a_declared_growth_is_paired_only_where_the_records_break_it() -> None:
    """An implementation claiming N^1.0 (flagged above 1.2): its group whose records read N^1.5 gets
    neighbouring pairs, the group that keeps the claim none, a cross-attention group none (claims
    are for Nk = N), and a step a bounded slope ratio times already is not timed twice."""
    from attnbench.sweep.pairs import CLAIM, case_of, chain, claims, length_steps, plan
    from attnbench.sweep.ratios import parse_ratios

    def rec(n: int, ms: float, dtype: str = "float32", kv: int | None = None) -> dict[str, Any]:
        return {"impl": "mine", "status": "ok", "seq_len": n, "kv_len": kv or n, "dtype": dtype, "time_ms": ms}

    claimed = claims({"mine": {"time_growth": 1.0}, "other": {"time_growth": None}}, 0.2)
    assert [(c.name, c.impl, c.at_most) for c in claimed] == [(CLAIM, "mine", 1.2)]
    lengths = (1024, 2048, 4096, 8192)
    records = [rec(n, n**1.5 / 1000) for n in lengths]  # breaks the claim
    records += [rec(n, n / 1000, "bfloat16") for n in lengths]  # keeps it
    records += [rec(n, n**1.5 / 1000, "float16", kv=512) for n in lengths]  # cross attention
    planned = [(p.ratio, p.case["dtype"], p.case["seq_len"]) for p in plan([], records, claimed)]
    assert planned == [(CLAIM, "float32", 2048), (CLAIM, "float32", 4096), (CLAIM, "float32", 8192)]

    ratio = parse_ratios([{"name": "slope", "impl": "mine", "metric": "slope", "at_most": 1.1,
                           "where": {"seq_len": [1024, 2048, 4096], "dtype": "float32"}}], "test")  # fmt: skip
    planned = [(p.ratio, p.case["dtype"], p.case["seq_len"]) for p in plan(ratio, records, claimed)]
    assert planned == [("slope", "float32", 2048), ("slope", "float32", 4096), (CLAIM, "float32", 8192)]

    cases = [case_of(r) for r in records[:3]]  # float32 at 1K, 2K, 4K
    slope = [{"ratio": "slope", "impl": "mine", "peer": "mine", "case": cases[i + 1], "peer_case": cases[i],
              "impl_ms": [2.8], "peer_ms": [1.0]} for i in range(2)]  # fmt: skip
    causal = [{**row, "ratio": "causal / full", "peer_case": {**row["case"], "causal": True}} for row in slope]
    steps = length_steps(slope + causal)  # a same-implementation ratio written after hides no length step
    assert chain(cases, "mine", steps) == slope
    assert chain(cases, "mine", length_steps(slope[:1] + causal)) is None  # 2K -> 4K was never timed


def test_a_claim_reuses_a_step_any_ratio_timed_and_times_only_the_others(tmp_path: Path) -> None:
    """The records break a claimed N^1.0; pairs.jsonl already holds the 1K -> 2K step, timed for a
    slope ratio: only 2K -> 4K reaches a worker, and its row is kept under the claim's name."""
    import socket

    from attnbench.sweep.pairs import CLAIM, case_of, claims, read_pairs, run_pairs

    host = socket.gethostname()
    recs = [{"impl": "mine", "status": "ok", "seq_len": n, "kv_len": n, "time_ms": n**1.5 / 1000, "host": host}
            for n in (1024, 2048, 4096)]  # fmt: skip
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))

    cases = [case_of(r) for r in recs]
    earlier = {"ratio": "slope", "impl": "mine", "peer": "mine", "case": cases[1], "peer_case": cases[0],
               "host": host, "impl_ms": [2.0], "peer_ms": [1.0], "timed_on": host}  # fmt: skip
    (tmp_path / "pairs.jsonl").write_text(json.dumps(earlier) + "\n")
    asked: list[int] = []

    class Pool:
        def request(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
            asked.append(int(job["case"]["seq_len"]))
            return {"pair": {"impl_ms": [2.0], "peer_ms": [1.0], "timed_on": host}}

    budget = {"timeout_s": 1.0, "max_time_s": 1.0}
    run_pairs(tmp_path, [], budget, lambda device: Pool(), False, claims({"mine": {"time_growth": 1.0}}))
    assert asked == [4096]
    assert [(r["ratio"], r["case"]["seq_len"]) for r in read_pairs(tmp_path)] == [("slope", 2048), (CLAIM, 4096)]


def test_a_claim_broken_only_by_drift_between_records_is_kept_on_paired_lengths(tmp_path: Path) -> None:
    """Records of an N^1.0 implementation (declared N^1.0) timed while the machine was 3x slower
    for N=2K and 8K: fitted to them the slope reads 1.31, "above claim". Chained through each
    length timed alternately with the one before it (2x a step), it reads 1.0, and the flag goes."""
    from attnbench.measure.records import read_records
    from attnbench.results.report.fit import scaling_table
    from attnbench.sweep.pairs import CLAIM, case_of

    lengths = [1024, 2048, 4096, 8192]
    drift = [rec("ours", n, 0.01 * n * (3 if i % 2 else 1)) for i, n in enumerate(lengths)]
    for record, n in zip(drift, lengths, strict=True):
        record.case["kv_len"] = n  # self-attention, as a run records it
    folder = run_folder(tmp_path, GRID, drift)
    info = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**info, "implementations": [{"name": "ours", "time_growth": 1.0}]}))
    cases = [case_of(r) for r in read_records(folder / "results.jsonl")]
    steps = [{"ratio": CLAIM, "impl": "ours", "peer": "ours", "case": cases[i + 1], "peer_case": cases[i],
              "impl_ms": [0.0201 * lengths[i], 0.02 * lengths[i], 0.0199 * lengths[i]],
              "peer_ms": [0.0101 * lengths[i], 0.01 * lengths[i], 0.0099 * lengths[i]]} for i in range(3)]  # fmt: skip
    data = load_data([folder])
    (alone,) = scaling_table(data.records, data.declarations).to_dict("records")
    assert alone["time_slope"] == pytest.approx(1.31, abs=0.02) and alone["time_verdict"] == "above claim"
    (folder / "pairs.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    data = load_data([folder])
    (paired,) = scaling_table(data.records, data.declarations, {r.label: r.pairs for r in data.runs}).to_dict("records")
    assert paired["time_fit"].endswith("paired") and paired["time_slope"] == pytest.approx(1.0, abs=0.01)
    assert paired["time_verdict"] == "meets claim" and not paired["time_flag"]
