"""compare: real regressions are found, noise and a busier machine are not called regressions."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import attnbench

from attnbench.measure.records import Record
from attnbench.results.compare import (
    ALPHA_LOOSE,
    ALPHA_STRICT,
    CompareError,
    choose_alpha,
    compare_runs,
    p_floor,
    run_compare,
)

DATA = Path(__file__).parent / "data" / "generated"  # made by tests/make_fixtures.py, not measured
MEDIANS = {("sdpa", 1024): 11.9, ("sdpa", 2048): 47.7, ("chunked", 1024): 16.4, ("chunked", 2048): 65.5}


def draw(rng: np.random.Generator, median: float, n: int, sigma: float = 0.03) -> list[float]:
    return [float(x) for x in median * rng.lognormal(0.0, sigma, n)]


def write_run(
    folder: Path,
    seed: int,
    *,
    impl_scale: float = 1.0,
    base_scale: float = 1.0,
    n: int = 15,
    with_baseline: bool = True,
    extra: list[Record] | None = None,
    skip: tuple[str, ...] = (),
    probe_scale: float | None = None,
    probe_n: int = 512,
    suite: str = "",
) -> Path:
    """A result folder: sdpa (the baseline) and chunked at N=1024 and 2048, samples drawn fresh (seeded)."""
    rng = np.random.default_rng(seed)
    records = []
    for (impl, seq), median in MEDIANS.items():
        if impl in skip:
            continue
        scale = base_scale if impl == "sdpa" else impl_scale
        samples = draw(rng, median * scale, n)
        baseline = draw(rng, MEDIANS[("sdpa", seq)] * base_scale, n) if with_baseline else []
        records.append(
            Record(
                impl=impl,
                status="ok",
                checks=["output"],
                seq_len=seq,
                kv_len=seq,
                heads=8,
                kv_heads=8,
                head_dim=64,
                threads=2,
                samples_ms=samples,
                time_ms=float(np.median(samples)),
                baseline="sdpa",
                baseline_samples_ms=baseline,
                machine="box-cpu",
                machine_probe="" if probe_scale is None else f"matmul float32 n={probe_n}",
                machine_probe_ms=[] if probe_scale is None else draw(rng, 1.5 * probe_scale * (probe_n / 512) ** 3, n),
                machine_probe_work=None if probe_scale is None else 2.0 * probe_n**3,
            )
        )
    records += extra or []
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(r.to_json() + "\n" for r in records), encoding="utf-8")
    info = {"schema_version": 1, "machine": {"id": "box-cpu"}, "generated": True}
    if suite:
        info["suite"] = {"name": suite, "hash": suite}
    (folder / "run.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def scaled_copy(src: Path, dst: Path, factor: float, impl: str = "chunked", load: float | None = None) -> Path:
    """The same run with one implementation's samples multiplied by ``factor`` (its baseline
    untouched), every record saying it was timed under ``load``."""
    dst.mkdir(parents=True, exist_ok=True)
    lines = []
    for line in (src / "results.jsonl").read_text(encoding="utf-8").splitlines():
        rec: dict[str, Any] = json.loads(line)
        rec["machine_load"] = load
        if rec["impl"] == impl and rec["status"] == "ok":
            rec["samples_ms"] = [s * factor for s in rec["samples_ms"]]
            rec["time_ms"] = float(np.median(rec["samples_ms"]))
        lines.append(json.dumps(rec))
    (dst / "results.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (dst / "run.json").write_text((src / "run.json").read_text(encoding="utf-8"), encoding="utf-8")
    return dst


def test_alpha_follows_the_p_value_floor() -> None:
    assert p_floor(5, 5) == pytest.approx(2 / 252)
    assert choose_alpha(3, 3) is None  # floor 0.1: no test can be significant
    assert choose_alpha(5, 5) == ALPHA_LOOSE  # floor 0.0079
    assert choose_alpha(6, 6) == ALPHA_LOOSE  # floor 0.0022, just above asv's 0.002
    assert choose_alpha(7, 7) == ALPHA_STRICT
    assert choose_alpha(15, 15) == ALPHA_STRICT


def test_deliberately_slower_is_a_regression(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", seed=1)
    new = scaled_copy(base, tmp_path / "new", 1.3)
    result = compare_runs(base, new, threshold_pct=10.0)
    slower = {(p.impl, p.seq_len) for p in result.regressions}
    assert slower == {("chunked", 1024), ("chunked", 2048)}
    for p in result.regressions:
        assert p.ratio == pytest.approx(1.3, rel=1e-6)
        assert p.p_value is not None and p.p_value < ALPHA_STRICT
        assert p.relative and all(r.ratio > 1.1 and r.verdict == "slower" for r in p.relative)
    assert all(p.verdict == "same" for p in result.pairs if p.impl == "sdpa")
    assert run_compare(base, new, 10.0, fail_on_regression=True, out=tmp_path / "out") == 1
    assert run_compare(base, new, 10.0, fail_on_regression=False, out=tmp_path / "out") == 0


def test_a_change_timed_under_load_is_uncertain_never_slower(tmp_path: Path) -> None:
    """The same 1.3× slowdown is a regression when the new run was timed on a quiet machine, and
    uncertain, with the load named, when other processes took half the cores' time meanwhile."""
    base = write_run(tmp_path / "base", seed=1)
    quiet = compare_runs(base, scaled_copy(base, tmp_path / "quiet", 1.3, load=0.03))
    assert {(p.impl, p.verdict) for p in quiet.pairs if p.impl == "chunked"} == {("chunked", "slower")}
    busy = compare_runs(base, scaled_copy(base, tmp_path / "busy", 1.3, load=0.52))
    chunked = [p for p in busy.pairs if p.impl == "chunked"]
    assert [p.verdict for p in chunked] == ["uncertain", "uncertain"] and not busy.regressions
    assert all("52% in NEW" in p.note for p in chunked)
    assert run_compare(base, tmp_path / "busy", 10.0, True, tmp_path / "out") == 0


def test_below_threshold_is_not_a_regression(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", seed=1)
    new = scaled_copy(base, tmp_path / "new", 1.05)  # real (significant) but under 10%
    result = compare_runs(base, new, threshold_pct=10.0)
    assert not result.regressions
    assert compare_runs(base, new, threshold_pct=3.0).regressions  # over a 3% threshold it is one


@pytest.mark.parametrize("seed", [2, 3, 4, 5, 6])
def test_noise_is_not_a_regression(tmp_path: Path, seed: int) -> None:
    base = write_run(tmp_path / "base", seed=1)
    new = write_run(tmp_path / "new", seed=seed)  # the same distributions, fresh draws
    result = compare_runs(base, new)
    assert result.pairs and all(p.verdict == "same" for p in result.pairs)
    assert run_compare(base, new, 10.0, fail_on_regression=True, out=tmp_path / "out") == 0


def test_busier_machine_is_not_a_regression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_run(tmp_path / "base", seed=1, probe_scale=1.0)
    new = write_run(tmp_path / "new", seed=2, impl_scale=1.3, base_scale=1.3, probe_scale=1.3)  # all 30% slower
    result = compare_runs(base, new)
    chunked = [p for p in result.pairs if p.impl == "chunked"]
    assert chunked and all(p.ratio > 1.2 for p in chunked)  # the absolute times did move
    assert all(p.p_value is not None and p.p_value < ALPHA_STRICT for p in chunked)  # ...significantly
    assert not result.regressions
    for p in result.pairs:
        moved = dict(re.findall(r"the (baseline sdpa|probe matmul float32) moved ×([0-9.]+)", p.note))
        expected = {"baseline sdpa"} if p.impl == "chunked" else {"probe matmul float32"}
        assert set(moved) == expected
        assert all(abs(float(x) - 1.3) < 0.08 for x in moved.values()) and "the machine" in p.note
    assert run_compare(base, new, 10.0, fail_on_regression=True, out=tmp_path / "out") == 0
    assert "0 slower" in capsys.readouterr().out


def test_busier_machine_without_baseline_samples_is_called_slower(tmp_path: Path) -> None:
    """Without the within-run baseline nothing tells a busier machine from a slower implementation."""
    base = write_run(tmp_path / "base", seed=1, with_baseline=False)
    new = write_run(tmp_path / "new", seed=2, impl_scale=1.3, base_scale=1.3, with_baseline=False)
    result = compare_runs(base, new)
    assert {p.impl for p in result.regressions} == {"sdpa", "chunked"}


def test_too_few_samples_is_uncertain_not_slower(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", seed=1, n=3)
    new = write_run(tmp_path / "new", seed=2, n=3, impl_scale=2.0)
    result = compare_runs(base, new)
    assert not result.regressions
    assert {p.impl for p in result.verdict("uncertain")} == {"chunked"}
    assert run_compare(base, new, 10.0, fail_on_regression=True, out=tmp_path / "out") == 0


def test_pairs_only_in_one_run_and_status_changes_are_listed(tmp_path: Path) -> None:
    gone = Record(
        impl="old_kernel", status="ok", checks=["output"], seq_len=1024, kv_len=1024, samples_ms=[1.0] * 10, time_ms=1.0
    )
    hostile = Record(
        impl="<script>alert(1)</script>",
        status="ok",
        checks=["output"],
        seq_len=1024,
        kv_len=1024,
        samples_ms=[2.0] * 10,
        time_ms=2.0,
    )
    oom = Record(
        impl="chunked",
        status="oom",
        reason="out of <memory>",
        seq_len=8192,
        kv_len=8192,
        heads=8,
        kv_heads=8,
        head_dim=64,
        threads=2,
    )
    ran = Record(
        impl="chunked",
        status="ok",
        checks=["output"],
        seq_len=8192,
        kv_len=8192,
        heads=8,
        kv_heads=8,
        head_dim=64,
        threads=2,
        samples_ms=[1.0] * 10,
        time_ms=1.0,
    )
    base = write_run(tmp_path / "base", seed=1, extra=[gone, ran])
    new = write_run(tmp_path / "new", seed=2, extra=[hostile, oom])
    result = compare_runs(base, new, out=tmp_path / "out")
    assert [d["impl"] for d in result.only_base] == ["old_kernel"]
    assert [d["impl"] for d in result.only_new] == ["<script>alert(1)</script>"]
    assert [(s["before"], s["after"]) for s in result.status_changed] == [("ok", "oom")]
    md = (tmp_path / "out" / "compare.md").read_text(encoding="utf-8")
    html = (tmp_path / "out" / "compare.html").read_text(encoding="utf-8")
    assert "Only in base" in md and "old_kernel" in md and "Only in new" in html
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>" not in md and "out of &lt;memory&gt;" in md


def test_recorded_compare_pair() -> None:
    result = compare_runs(DATA / "compare_base", DATA / "compare_new")
    assert {p.impl for p in result.verdict("slower")} == {"chunked"}
    assert {p.impl for p in result.verdict("faster")} == {"naive"}
    assert {p.impl for p in result.verdict("same")} == {"sdpa"}
    assert {d["impl"] for d in result.only_base} == {"old_impl"}
    assert {d["impl"] for d in result.only_new} == {"new_impl", "naive"}  # naive at N=8192: oom, new case


def test_run_compare_writes_into_a_folder_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = write_run(tmp_path / "base", seed=1)
    new = scaled_copy(base, tmp_path / "new", 1.3)
    before = {p.name for p in new.iterdir()}
    monkeypatch.chdir(tmp_path)
    assert run_compare(base, new, 10.0, fail_on_regression=True, out=None) == 1
    assert {p.name for p in new.iterdir()} == before  # nothing written into the runs it reads
    (folder,) = (tmp_path / "results").glob("compare_base_vs_new_*")
    assert "slower" in (folder / "compare.md").read_text(encoding="utf-8")
    with pytest.raises(CompareError, match="one of the runs"):
        run_compare(base, new, 10.0, fail_on_regression=True, out=new)
    with pytest.raises(CompareError, match="is inside"):
        run_compare(base, new, 10.0, fail_on_regression=True, out=base / "comparison")
    proc = attnbench("compare", str(base), str(new), "--out", str(new / "sub" / "c"))
    assert proc.returncode == 2 and "is inside" in proc.stderr and not (new / "sub").exists()


def test_the_machine_probe_is_a_reference_for_the_baseline_too(tmp_path: Path) -> None:
    """The baseline has no baseline of its own; the probe timed beside it tells a busier machine
    (everything and the probe 30% slower: no regression) from a slower baseline (3×: one)."""
    base = write_run(tmp_path / "base", seed=1, probe_scale=1.0)
    busier = write_run(tmp_path / "busier", seed=2, impl_scale=1.3, base_scale=1.3, probe_scale=1.3)
    result = compare_runs(base, busier)
    assert not result.regressions
    for p in result.pairs:
        if p.ratio > 1.2:
            assert ("probe" if p.impl == "sdpa" else "baseline sdpa") in p.note
    slower = write_run(tmp_path / "slower", seed=3, base_scale=3.0, probe_scale=1.0)
    assert {p.impl for p in compare_runs(base, slower).regressions} == {"sdpa"}


def test_a_change_judged_by_the_probe_alone_must_exceed_the_drift_between_runs(tmp_path: Path) -> None:
    """Measured here: the unchanged SDPA call moved ×1.17-1.18 between runs while the probe timed
    beside it stayed within 10%. Without an interleaved baseline such a move is uncertain, not a
    regression; beside a baseline the same ×1.18 is one, and a ×1.4 baseline is one too."""
    base = write_run(tmp_path / "base", seed=1, probe_scale=1.0)
    drifted = write_run(tmp_path / "drifted", seed=2, impl_scale=1.18, base_scale=1.18, probe_scale=1.0)
    sdpa = [p for p in compare_runs(base, drifted).pairs if p.impl == "sdpa"]
    assert len(sdpa) == 2 and all(p.verdict == "uncertain" for p in sdpa), [(p.verdict, p.note) for p in sdpa]
    assert all("without an interleaved baseline" in p.note for p in sdpa)
    assert run_compare(base, drifted, 10.0, fail_on_regression=True, out=tmp_path / "c1") == 0
    slower = write_run(tmp_path / "slower", seed=3, impl_scale=1.18, probe_scale=1.0)
    assert {p.impl for p in compare_runs(base, slower).regressions} == {"chunked"}
    much = write_run(tmp_path / "much", seed=4, base_scale=1.4, impl_scale=1.4, probe_scale=1.0)
    assert {p.impl for p in compare_runs(base, much).regressions} == {"sdpa"}


def test_a_probe_of_another_size_is_set_against_its_work(tmp_path: Path) -> None:
    """Calibration on a busier machine may pick a smaller probe; per unit of work the two runs
    still share the reference."""
    base = write_run(tmp_path / "base", seed=1, probe_scale=1.0, probe_n=512)
    small = write_run(tmp_path / "small", seed=2, base_scale=3.0, probe_scale=1.0, probe_n=256)
    result = compare_runs(base, small)
    sdpa = [p for p in result.pairs if p.impl == "sdpa"]
    assert sdpa and all([r.reference for r in p.relative] == ["probe matmul float32"] for p in sdpa)
    assert all(r.ratio == pytest.approx(3.0, rel=0.1) for p in sdpa for r in p.relative)
    assert {p.impl for p in result.regressions} == {"sdpa"}


def test_load_that_strikes_the_probe_harder_is_uncertain(tmp_path: Path) -> None:
    """Measured on this project's 2-core machine with two spinning processes: the 2 ms probe ran
    37-74× slower, 55-190 ms kernels 1.3-2×. Relative to the probe the baseline got faster; nothing
    tells the machine from the implementation, so it is uncertain. The other implementation kept
    pace with the baseline: same."""
    base = write_run(tmp_path / "base", seed=1, probe_scale=1.0)
    busy = write_run(tmp_path / "busy", seed=2, impl_scale=2.0, base_scale=2.0, probe_scale=40.0)
    result = compare_runs(base, busy)
    assert not result.regressions
    assert {p.impl: p.verdict for p in result.pairs} == {"sdpa": "uncertain", "chunked": "same"}
    assert all("rerun on a quiet machine" in p.note for p in result.pairs if p.impl == "sdpa")
    assert run_compare(base, busy, 10.0, fail_on_regression=True, out=tmp_path / "out") == 0


def test_load_that_strikes_the_baseline_harder_than_the_probe_is_uncertain(tmp_path: Path) -> None:
    """The other way round, also measured here: under two spinning processes the probe ran ×1.5
    and a 0.5 ms SDPA call ×3.1. Relative to the probe the baseline got 2× slower, but the probe
    only says the machine changed, so the baseline is uncertain, and no regression is failed."""
    base = write_run(tmp_path / "base", seed=1, probe_scale=1.0)
    busy = write_run(tmp_path / "busy", seed=2, impl_scale=3.1, base_scale=3.1, probe_scale=1.5)
    result = compare_runs(base, busy)
    assert {p.impl: p.verdict for p in result.pairs} == {"sdpa": "uncertain", "chunked": "same"}
    assert all("rerun on a quiet machine" in p.note for p in result.pairs if p.impl == "sdpa")
    assert run_compare(base, busy, 10.0, fail_on_regression=True, out=tmp_path / "out") == 0
    # the probe 3× faster in the loaded run while the baseline ran ×1.5 slower (also measured)
    odd = write_run(tmp_path / "odd", seed=4, impl_scale=1.5, base_scale=1.5, probe_scale=0.31)
    assert {p.impl: p.verdict for p in compare_runs(base, odd).pairs}["sdpa"] == "uncertain"
    # on a machine that did not change, the same slowdown of the baseline is a regression
    slower = write_run(tmp_path / "slower", seed=3, base_scale=3.1, probe_scale=1.0)
    assert {p.impl for p in compare_runs(base, slower).regressions} == {"sdpa"}


def test_a_pair_that_leaves_ok_for_any_status_or_vanishes_fails_the_gate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = Record(
        impl="extra", status="ok", checks=["output"], seq_len=512, kv_len=512, samples_ms=[1.0] * 10, time_ms=1.0
    )
    base = write_run(tmp_path / "base", seed=1, extra=[ran])
    for status in ("unavailable", "skipped", "unsupported"):
        after = Record(impl="extra", status=status, reason="why", seq_len=512, kv_len=512)
        new = write_run(tmp_path / status, seed=1, extra=[after])
        assert run_compare(base, new, 10.0, True, tmp_path / "out") == 1
        assert f"ok -> {status}: extra" in capsys.readouterr().out
    gone = write_run(tmp_path / "gone", seed=1)
    assert run_compare(base, gone, 10.0, True, tmp_path / "out") == 1
    assert "vanished: extra" in capsys.readouterr().out
    assert run_compare(base, gone, 10.0, False, tmp_path / "out") == 0


def test_different_suites_warn_and_nothing_to_compare_is_an_error(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", seed=1, suite="quick")
    other = write_run(tmp_path / "other", seed=1, suite="smoke")
    assert any("different suites" in w for w in compare_runs(base, other).warnings)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.jsonl").write_text("")
    proc = attnbench("compare", str(base), str(empty), "--out", str(tmp_path / "c"))
    assert proc.returncode == 2 and "nothing to compare" in proc.stderr


def test_a_pair_that_breaks_fails_the_gate(tmp_path: Path) -> None:
    crashed = Record(impl="chunked", status="crashed", reason="worker killed by SIGSEGV", seq_len=8192, kv_len=8192)
    ran = Record(
        impl="chunked", status="ok", checks=["output"], seq_len=8192, kv_len=8192, samples_ms=[1.0] * 10, time_ms=1.0
    )
    base = write_run(tmp_path / "base", seed=1, extra=[ran])
    new = write_run(tmp_path / "new", seed=1, extra=[crashed])
    assert not compare_runs(base, new).regressions
    assert run_compare(base, new, 10.0, True, tmp_path / "out") == 1
    assert run_compare(base, new, 10.0, False, tmp_path / "out") == 0
