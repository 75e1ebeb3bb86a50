"""The measuring parts on their own: patterns and FLOPs, timing statistics, memory, records."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbench.case.patterns import BlockLayout, Pattern
from attnbench.case.problem import Problem
from attnbench.case.reference import sample_rows
from attnbench.case.work import dense_flops, softmax_flops
from attnbench.measure.devices import Clock, device
from attnbench.measure.memory import cpu_peak_bytes
from attnbench.measure.records import Record, RecordWriter, read_records
from attnbench.measure.timing import Samples, measure


def test_full_forward_flops_follow_the_convention() -> None:
    p = Problem(batch=2, heads=8, seq_len=1024, head_dim=64)
    assert softmax_flops(p) == 4 * 2 * 8 * 1024 * 1024 * 64
    assert dense_flops(p) == softmax_flops(p)


def test_causal_counts_only_unmasked_pairs_once() -> None:
    n = 1000
    p = Problem(heads=1, seq_len=n, head_dim=64, causal=True)
    assert softmax_flops(p) == 4 * 64 * n * (n + 1) // 2  # not halved twice, not N²
    assert dense_flops(p) == 4 * 64 * n * n


def test_causal_cross_attention_is_bottom_right_aligned() -> None:
    # 4 queries against 10 keys: the last query sees all 10, the first sees 7.
    assert Pattern(causal=True).pairs(4, 10) == 7 + 8 + 9 + 10
    # 10 queries against 4 keys: the first 6 see nothing.
    assert Pattern(causal=True).pairs(10, 4) == 1 + 2 + 3 + 4


def test_backward_modes_scale_the_forward() -> None:
    fwd = Problem(seq_len=256, mode="forward")
    assert softmax_flops(fwd.with_(mode="backward")) == 2.5 * softmax_flops(fwd)
    assert softmax_flops(fwd.with_(mode="forward_backward")) == 3.5 * softmax_flops(fwd)


@settings(max_examples=40, deadline=None)
@given(
    nq=st.integers(1, 300),
    nk=st.integers(1, 300),
    causal=st.booleans(),
    window=st.integers(0, 70),
    layout=st.sampled_from(["dense", "bigbird:block=16", "longformer:block=8,global=2", "local:block=32,local=0"]),
)
def test_pair_count_equals_the_mask(nq: int, nk: int, causal: bool, window: int, layout: str) -> None:
    pattern = Pattern.make(causal, window, layout)
    assert pattern.pairs(nq, nk) == int(pattern.mask(nq, nk).sum())


def test_window_semantics() -> None:
    mask = Pattern(causal=True, window=3).mask(6, 6)
    assert mask[5].tolist() == [False, False, False, True, True, True]  # the 3 keys ending at the query
    mask = Pattern(causal=False, window=2).mask(6, 6)
    assert mask[2].tolist() == [False, True, True, True, False, False]  # |p - j| < 2


def test_block_layout_is_reproducible_and_seeded() -> None:
    a = BlockLayout.parse("bigbird:block=16,random=3,seed=1").table(512, 512)
    b = BlockLayout.parse("bigbird:block=16,random=3,seed=1").table(512, 512)
    c = BlockLayout.parse("bigbird:block=16,random=3,seed=2").table(512, 512)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (
        BlockLayout.parse("bigbird:block=16,random=3,seed=1").spec
        == "bigbird:block=16,local=1,global=1,random=3,seed=1"
    )


def test_block_layout_keeps_a_number_of_blocks_independent_of_length() -> None:
    layout = BlockLayout.parse("local:block=64,local=1")
    for n in (1024, 4096):
        per_row = layout.table(n, n).sum(dim=1)
        assert int(per_row.max()) == 3


@pytest.mark.parametrize(("nq", "nk"), [(100, 100), (100, 137), (61, 200), (200, 61), (1, 300), (333, 1)])
def test_every_row_keeps_its_own_diagonal_key_with_local_zero(nq: int, nk: int) -> None:
    """Blocks are cut by key position, so ``local=0`` keeps the key level with each query even
    when ``nk - nq`` is not a multiple of the block (the bug: rows lost their own diagonal)."""
    pattern = Pattern.make(True, 0, "local:block=16,local=0")
    mask = pattern.mask(nq, nk)  # [Nq, Nk]
    i = torch.arange(nq)
    p = i + nk - nq
    seen = p >= 0  # queries before every key see nothing under causal
    assert mask[i[seen], p[seen]].all()
    # and nothing beyond its own position block
    for row in range(nq):
        if p[row] >= 0:
            kept = mask[row].nonzero().flatten()
            assert (kept // 16 == int(p[row]) // 16).all(), (row, kept)


@pytest.mark.parametrize(("nq", "nk"), [(200, 61), (300, 64), (64, 300), (77, 77)])
def test_global_zero_means_no_global_rows(nq: int, nk: int) -> None:
    """With ``global=0`` no query row sees every key, whatever nq and nk (the bug: with nq > nk the
    negative offset made rows before the keys "global")."""
    pattern = Pattern.make(False, 0, "local:block=16,local=1,global=0")
    mask = pattern.mask(nq, nk)  # [Nq, Nk]
    assert nk <= 48 or not mask.all(dim=1).any()
    p = torch.arange(nq) + nk - nq
    band = ((p[:, None] // 16) - (torch.arange(nk)[None, :] // 16)).abs() <= 1  # [Nq, Nk]
    assert torch.equal(mask, band)


def test_global_rows_follow_position() -> None:
    """``global=1``: the queries at key positions 0..block-1 see every key, and only those."""
    nq, nk = 40, 100  # positions 60..99: no query is at position < 16
    mask = Pattern.make(False, 0, "longformer:block=16").mask(nq, nk)
    assert not mask.all(dim=1).any()
    mask = Pattern.make(False, 0, "longformer:block=16").mask(120, 100)  # positions -20..99
    p = torch.arange(120) - 20
    assert torch.equal(mask.all(dim=1), (p >= 0) & (p < 16))


def test_sample_rows_is_seeded_and_keeps_the_last_row() -> None:
    rows = sample_rows(10_000, 100, seed=3)
    assert rows is not None and len(rows) == 100 and int(rows[-1]) == 9_999
    again = sample_rows(10_000, 100, seed=3)
    assert again is not None and torch.equal(rows, again)
    assert sample_rows(50, 100) is None


def test_samples_statistics() -> None:
    s = Samples([1.0, 2.0, 3.0, 4.0, 100.0])
    q1, med, q3 = s.quartiles()
    assert (q1, med, q3) == (2.0, 3.0, 4.0)
    assert s.spread == pytest.approx(2.0 / 3.0)


def _busy(ms: float) -> None:
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


def test_measure_interleaves_each_call_with_its_own_repeat_count() -> None:
    calls: list[str] = []

    def a() -> None:
        calls.append("a")
        _busy(0.2)

    def b() -> None:
        calls.append("b")
        _busy(3.0)

    timing = measure(a, b, Clock(device("cpu")), min_time_s=0.05, max_time_s=2.0, min_repeats=5)
    assert timing.baseline is not None
    assert len(timing.impl.ms) == len(timing.baseline.ms) >= 5
    assert timing.impl.inner >= 4 and timing.baseline.inner == 1  # a 0.2 ms call is repeated, a 3 ms one not
    rounds = "".join(calls[4:])  # after each one's warm-up and sizing call: a a b b
    assert rounds.startswith("a" * timing.impl.inner + "b" + "a" * timing.impl.inner + "b")


def test_a_slow_baseline_stops_at_its_own_budget_and_costs_the_implementation_nothing() -> None:
    """The old loop reused the implementation's repeat count for the baseline: a fast
    implementation beside a slow baseline then ran for inner × the baseline's time."""
    timing = measure(
        lambda: _busy(0.05), lambda: _busy(40.0), Clock(device("cpu")),
        min_time_s=0.05, max_time_s=0.5, min_repeats=5, baseline_budget_s=0.1,
    )  # fmt: skip
    assert timing.baseline is not None and timing.baseline.inner == 1
    assert 1 <= len(timing.baseline.ms) <= 3  # 40 ms first call + samples until 0.1 s of its own
    assert len(timing.impl.ms) >= 5 and timing.impl.inner >= 10


def test_min_repeats_is_a_minimum_even_past_max_time() -> None:
    timing = measure(lambda: _busy(20.0), None, Clock(device("cpu")), min_time_s=0.0, max_time_s=0.03, min_repeats=7)
    assert len(timing.impl.ms) == 7


@pytest.mark.parametrize(("call_ms", "kept"), [(20.0, True), (0.05, False)])
def test_a_slow_calls_sizing_call_is_its_first_sample_and_no_call_is_thrown_away(call_ms: float, kept: bool) -> None:
    """After the warm-up, a call that alone makes a sample is timed once to size the repeats:
    that timing is the first sample, so n samples of a slow call cost n calls, not n + 1."""
    calls: list[str] = []

    def fn() -> None:
        calls.append("a")
        _busy(call_ms)

    timing = measure(fn, None, Clock(device("cpu")), min_time_s=0.0, max_time_s=0.03, min_repeats=7, warmup=1)
    inner = timing.impl.inner
    assert len(timing.impl.ms) == 7
    assert len(calls) == 1 + 7 * inner + (0 if kept else 1)  # the warm-up, the samples (and a sizing call)
    assert (inner == 1) == kept


def test_measure_times_the_probe_beside_the_case() -> None:
    timing = measure(
        lambda: _busy(1.0), None, Clock(device("cpu")), probe=lambda: _busy(2.0), min_time_s=0.02, min_repeats=5
    )
    assert timing.probe is not None and len(timing.probe.ms) == len(timing.impl.ms)
    assert 1.8 <= min(timing.probe.ms) <= 6.0


MEMORY_PROBE = """
import torch
from attnbench.measure.memory import cpu_peak_bytes

mib = 2**20
print(cpu_peak_bytes(lambda: torch.ones(64 * mib // 4)), cpu_peak_bytes(lambda: None))
"""


def test_memory_sees_a_tensor_allocation() -> None:
    """In a fresh process with the workers' environment, as the harness measures: this test
    process's heap, after a thousand other tests, is no place to count pages (in a full run it
    once gave 0 bytes for a new 64 MiB tensor)."""
    import os
    import subprocess
    import sys

    from attnbench.sweep.workers import WORKER_ENV

    env = {**os.environ, **WORKER_ENV}
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE], env=env, capture_output=True, text=True, check=True)
    tensor, nothing = (int(x) for x in proc.stdout.split())
    mib = 2**20
    assert 60 * mib <= tensor <= 80 * mib
    assert nothing < 8 * mib


def _status(rss_mib: int, hwm_mib: int, anon_mib: int, file_mib: int) -> str:
    kib = 1024
    return (
        f"VmHWM:\t{hwm_mib * kib} kB\nVmRSS:\t{rss_mib * kib} kB\n"
        f"RssAnon:\t{anon_mib * kib} kB\nRssFile:\t{file_mib * kib} kB\nRssShmem:\t0 kB\n"
    )


def test_memory_is_not_hidden_by_reclaimed_file_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call that peaks at 96 MiB of temporaries, during which the kernel drops 200 MiB of the
    process's library pages: the first pass's high-water mark is below the resident set it
    started from. The pass is repeated, and the quiet second pass gives the figure."""
    import attnbench.measure.memory as memory

    status, clear = tmp_path / "status", tmp_path / "clear_refs"
    clear.write_text("")
    monkeypatch.setattr(memory, "STATUS", status)
    monkeypatch.setattr(memory, "CLEAR_REFS", clear)
    passes = [
        # (after the call) rss, hwm, anon, file: 200 MiB of file pages gone, the temporaries freed;
        # the high-water mark (896 MiB) lies below the 1000 MiB the pass started from
        _status(800, 896, 500, 300),
        # the second pass starts where the first ended, and nothing is reclaimed during it
        _status(800, 896, 500, 300),
    ]
    status.write_text(_status(1000, 1000, 500, 500))

    def call() -> None:
        status.write_text(passes.pop(0))

    assert cpu_peak_bytes(call) == 96 * 2**20
    assert not passes  # two passes ran


HEAP_ROOM = """
import ctypes, sys
import torch
import attnbench.measure.memory as memory

if sys.argv[1] == "planted":
    memory.HOLD_BLOCKS = ()  # the heap's free room left free during the pass
libc = memory._glibc()
mib = 2**20
memory.timing_allocator()
blocks = [libc.malloc(8 * mib) for _ in range(9)]
for block in blocks:
    ctypes.memset(block, 1, 8 * mib)
for block in blocks[0::2]:
    libc.free(block)  # five 8 MiB holes, each between two blocks still held


def call():
    a = torch.ones(mib)  # [1M] 4 MiB
    del a
    b = torch.ones(3 * mib // 2)  # 6 MiB
    del b
    c = torch.ones(7 * mib // 4)  # 7 MiB
    return c.sum()


call()  # warm, as the judged call comes after timing
print(*(memory.cpu_peak_bytes(call) / mib for _ in range(4)))
"""


@pytest.mark.parametrize("hold", [True, False], ids=["held", "planted: heap room not held"])
def test_a_memory_pass_does_not_count_the_heaps_free_room_the_call_happens_to_touch(hold: bool) -> None:
    """Timed calls leave free blocks in glibc's heap, which it serves requests from before it maps
    any; a block freed during the call then stays resident. A call whose temporaries are 4, 6 and
    7 MiB, one alive at a time, beside five free 8 MiB holes: held, the pass reads its 7 MiB;
    with the holes left free (the planted bug) it read 12.9-20.3 MiB. In a fresh process, whose
    heap is the same every time (this one's depends on the tests before it)."""
    import subprocess
    import sys

    import attnbench.measure.memory as memory

    if memory._glibc() is None or not memory.CLEAR_REFS.exists():
        pytest.skip("needs glibc and /proc/self/clear_refs")
    how = "held" if hold else "planted"
    proc = subprocess.run([sys.executable, "-c", HEAP_ROOM, how], capture_output=True, text=True, check=True)
    readings = [float(x) for x in proc.stdout.split()]
    assert len(readings) == 4
    if hold:  # 6.8-6.9 here; up to 8 where transparent huge pages round 7 MiB up to 2 MiB pages
        assert all(6.5 <= r <= 8.5 for r in readings), readings
    else:  # 11-17 MiB here: a hole counted beside the block the call holds
        assert max(readings) > 9.5, readings


def test_memory_floor_is_the_anonymous_growth_of_a_held_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reclaim in every pass: the figure is still at least what the held result occupies."""
    import attnbench.measure.memory as memory

    status, clear = tmp_path / "status", tmp_path / "clear_refs"
    clear.write_text("")
    monkeypatch.setattr(memory, "STATUS", status)
    monkeypatch.setattr(memory, "CLEAR_REFS", clear)

    def call() -> None:
        status.write_text(_status(900, 900, 564, 336))  # 64 MiB held, 164 MiB of file pages gone

    status.write_text(_status(1000, 1000, 500, 500))
    assert cpu_peak_bytes(call) == 64 * 2**20


def test_torn_last_line_is_ignored_and_trimmed(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with RecordWriter(path) as w:
        w.write(Record(impl="a", status="ok"))
    with path.open("a") as fh:
        fh.write('{"impl": "b", "sta')  # the runner died mid-write
    assert [r["impl"] for r in read_records(path)] == ["a"]
    with RecordWriter(path) as w:
        w.write(Record(impl="c", status="error"))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["impl"] for line in lines] == ["a", "c"]


def test_records_load_straight_into_pandas(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "results.jsonl"
    with RecordWriter(path) as w:
        w.write(Record(impl="a", status="ok", time_ms=1.5, samples_ms=[1.4, 1.5, 1.6]))
        w.write(Record(impl="b", status="oom", reason="too big"))
    frame = pd.read_json(path, lines=True)
    assert list(frame["impl"]) == ["a", "b"]
    assert frame.loc[0, "time_ms"] == 1.5
    assert os.path.getsize(path) > 0


def test_no_record_field_shadows_a_case_field() -> None:
    """A record is written flat, its case's fields beside its measurements: one name for two
    things would lose one of them (the machine probe's label once overwrote the input probe)."""
    from dataclasses import fields as dataclass_fields

    from attnbench.case.keys import CASE_KEYS

    measured = {f.name for f in dataclass_fields(Record)} - {"case"}
    assert not set(CASE_KEYS) & measured
    row = Record("x", "ok", probe="retrieval", machine_probe="matmul").as_dict()
    assert row["probe"] == "retrieval" and row["machine_probe"] == "matmul"


def test_the_probe_per_unit_of_work_is_its_median_over_its_work_and_spreads_across_pairs() -> None:
    """One formula for the probe's time per unit of work (the report's probe spread and
    ``benchmarks/normalised_vs_alone.py`` read it): a probe of twice the work at twice the time is
    the same machine speed; a record without work or samples has none."""
    import pandas as pd

    from attnbench.measure.figures import probe_ms_per_unit
    from attnbench.results.report.summary import _probe_spread

    small = {"machine_probe_ms": [1.0, 3.0, 2.0], "machine_probe_work": 1e6}
    large = {"machine_probe_ms": [4.0, 4.4, 3.6], "machine_probe_work": 2e6}
    slow = {"machine_probe_ms": [3.0, 3.0, 3.0], "machine_probe_work": 1e6}
    assert probe_ms_per_unit(small) == pytest.approx(2e-6) and probe_ms_per_unit(large) == pytest.approx(2e-6)
    no_work = {**small, "machine_probe_work": float("nan")}  # a record without work, read into a frame
    for none in ({}, {"machine_probe_ms": [], "machine_probe_work": 1e6}, no_work):
        assert probe_ms_per_unit(none) is None
    assert _probe_spread(pd.DataFrame([small, large])) == pytest.approx(0.0)
    # per unit 2, 2 and 3 (x 1e-6): (3 - 2) / 2
    assert _probe_spread(pd.DataFrame([small, large, slow])) == pytest.approx(0.5)
