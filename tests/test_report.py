"""report: every file written, offline HTML, escaped plugin text, statuses, flags, machines, pytest-benchmark input."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from attnbench.case.status import STATUSES
from attnbench.measure.records import RECORD_FIELDS
from attnbench.results.read import load_results, load_run
from attnbench.results.report import write_report
from attnbench.results.report.data import load_data
from attnbench.results.report.html import md_cell
from attnbench.results.report.summary import summary
from attnbench.results.report.tables import timings

DATA = Path(__file__).parent / "data" / "generated"  # made by tests/make_fixtures.py, not measured
RECORDED = Path(__file__).parent / "data" / "recorded"  # real runs of attnbench
HOSTILE = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep_report")
    write_report([DATA / "sweep"], out)
    return out


@pytest.fixture(scope="module")
def two_machines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("machines_report")
    write_report([DATA / "machine_a", DATA / "machine_b"], out)
    return out


def html(folder: Path) -> str:
    return (folder / "report.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_writes_every_file(sweep: Path) -> None:
    for name in ("report.md", "report.html"):
        assert (sweep / name).stat().st_size > 1000
    tables = {p.stem for p in (sweep / "tables").glob("*.csv")}
    assert {"summary", "machines", "status", "failures", "timings", "accuracy", "scaling", "records"} <= tables
    pngs = sorted((sweep / "plots").glob("*.png"))
    kinds = {p.stem.rsplit("_", 1)[0] for p in pngs}
    assert {"time", "memory", "throughput", "speedup", "pareto", "heatmap_heads", "heatmap_head_dim"} <= kinds
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        svg = png.with_suffix(".svg")
        assert svg.is_file() and "<svg" in svg.read_text(encoding="utf-8")[:2000]


def test_default_out_is_the_first_folder(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    shutil.copytree(DATA / "machine_a", folder)
    assert write_report([folder]) == folder / "report.html"
    assert (folder / "report.md").is_file() and (folder / "tables" / "summary.csv").is_file()


class Tags(HTMLParser):
    """Every tag of a page, with its attributes (text, escaped or not, is not a tag)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_html_is_offline(sweep: Path) -> None:
    page = html(sweep)
    assert not re.search(r"https?://", page)
    parser = Tags()
    parser.feed(page)
    names = {tag for tag, _ in parser.tags}
    assert names.isdisjoint({"script", "link", "iframe", "object", "embed", "base"})
    refs = [a.get(k) or "" for _, a in parser.tags for k in ("src", "href", "srcset", "action") if k in a]
    imgs = [a.get("src") or "" for tag, a in parser.tags if tag == "img"]
    assert imgs and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert all(r.startswith(("data:image/png;base64,", "#")) for r in refs)  # only in-page anchors
    assert "@import" not in page and "url(" not in page
    assert len(imgs) == len(list((sweep / "plots").glob("*.png")))


def test_every_status_in_matrix_with_reason(sweep: Path) -> None:
    page = html(sweep)
    for status in STATUSES:
        assert re.search(rf'<td class="st st-{status}" title="{status}', page), status
    assert 'title="oom: out of memory: tried to allocate 2.00 GiB' in page
    assert "exceeded the 60 s budget" in page  # the list beneath
    md = (sweep / "report.md").read_text(encoding="utf-8")
    for status in STATUSES:
        assert f"| {status} |" in md


def test_reasons_and_names_escaped(sweep: Path) -> None:
    page = html(sweep)
    assert "<script>alert" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>[1, 8, 512, 64]</b>" not in page and "&lt;b&gt;[1, 8, 512, 64]&lt;/b&gt;" in page
    assert "<img src=x" not in page and "onerror=alert(2)&gt;" in page
    md = (sweep / "report.md").read_text(encoding="utf-8")
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert md_cell("a|b<c>\nd") == "a\\|b&lt;c&gt; d"


def test_slope_flagged_above_claim(sweep: Path) -> None:
    scaling = pd.read_csv(sweep / "tables" / "scaling.csv")
    full = scaling[scaling["group"] == "forward · fp32 · cpu · B1 H8 D64 · full"].set_index("impl")
    assert bool(full.loc["local_window", "time_flag"]) and full.loc["local_window", "time_slope"] > 1.2
    assert not bool(full.loc["sdpa", "time_flag"])
    page = html(sweep)
    page = page[page.index('id="scaling"') :]
    page = page[: page.index("</section>")]
    row = re.search(r"<tr><td>local_window</td><td>forward · fp32 · cpu · B1 H8 D64 · full</td>.*?</tr>", page, re.S)
    assert row and "above claim" in row.group(0)
    sdpa = re.search(r"<tr><td>sdpa</td><td>forward · fp32 · cpu · B1 H8 D64 · full</td>.*?</tr>", page, re.S)
    assert sdpa and "above claim" not in sdpa.group(0)
    assert "local_window (forward · fp32 · cpu · B1 H8 D64 · full, ci-box-cpu): time grows as N^2.00" in html(sweep)


def test_summary_leads_and_ignores_failures(sweep: Path) -> None:
    page = html(sweep)
    assert page.index('id="summary"') < page.index('id="machines"') < page.index('id="status"')
    table = pd.read_csv(sweep / "tables" / "summary.csv")
    main = table[table["group"] == "forward · fp32 · cpu · B1 H8 D64 · full"].set_index("length")
    assert set(main["fastest"]) == {"sdpa"}  # linear is faster but approximate: named apart
    assert set(main["approximation"]) == {"linear"}
    assert main.loc["N=8192", "ran"] == 4  # naive oom, slow_loop and segv_kernel skipped, ...
    assert "fast_bf16_cast" not in set(pd.read_csv(sweep / "tables" / "timings.csv")["impl"])


def test_inaccurate_never_a_speedup(tmp_path: Path) -> None:
    """Even when a record that is not ok carries timings (a runner bug), it is never shown as fast."""
    folder = tmp_path / "run"
    shutil.copytree(DATA / "sweep", folder)
    lines = []
    for line in (folder / "results.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec["status"] in ("inaccurate", "timeout"):
            rec.update(time_ms=0.001, samples_ms=[0.001], speedup=9999.0, gflops=1e6, peak_mem_bytes=1)
        lines.append(json.dumps(rec))
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = load_data([folder])
    assert data.records.loc[data.records["status"] != "ok", "speedup"].isna().all()
    table = summary(data)
    assert not table["fastest"].isin(["fast_bf16_cast", "slow_loop"]).any()
    assert not table["lowest_memory"].isin(["fast_bf16_cast", "slow_loop"]).any()
    assert set(timings(data)["impl"]).isdisjoint({"fast_bf16_cast"})


def test_machines_and_peak_shown(sweep: Path) -> None:
    page = html(sweep)
    assert "Intel(R) Xeon(R) Platinum 8488C" in page and "2.13.0+cpu" in page
    assert "cpu float32 2T: 196.4 GFLOP/s" in page


def test_multi_machine_table(two_machines: Path, sweep: Path) -> None:
    page = html(two_machines)
    assert 'id="across"' in page and 'id="across"' not in html(sweep)
    across = pd.read_csv(two_machines / "tables" / "machines_compared.csv")
    assert {"ci-box-cpu", "ws-8c-cpu", "ws-8c-cpu / ci-box-cpu", "fastest machine"} <= set(across.columns)
    assert len(across) == 12  # 3 implementations × 4 sizes, matched although the thread counts differ
    assert set(across["fastest machine"]) == {"ws-8c-cpu"}
    summary_csv = pd.read_csv(two_machines / "tables" / "summary.csv")
    assert set(summary_csv["host"]) == {"ci-box-cpu", "ws-8c-cpu"}


def test_same_machine_twice_gets_distinct_labels(tmp_path: Path) -> None:
    data = load_data([DATA / "compare_base", DATA / "compare_new"])
    assert data.machines == ["ci-box-cpu (compare_base)", "ci-box-cpu (compare_new)"]


def test_load_results_dir_and_jsonl() -> None:
    frame = load_results(DATA / "sweep")
    assert set(RECORD_FIELDS) <= set(frame.columns) and "machine" in frame.columns
    assert len(frame) == sum(1 for _ in (DATA / "sweep" / "results.jsonl").open())
    assert set(frame["status"]) == set(STATUSES)
    assert len(load_results(DATA / "sweep" / "results.jsonl")) == len(frame)
    assert load_run(DATA / "sweep")["machine"]["id"] == "ci-box-cpu"


def test_load_results_torn_line_and_resume(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    shutil.copytree(DATA / "machine_a", folder)
    text = (folder / "results.jsonl").read_text(encoding="utf-8")
    first = json.loads(text.splitlines()[0])
    first["time_ms"], first["samples_ms"] = 123.0, [123.0] * 5  # the resumed run measured it again
    (folder / "results.jsonl").write_text(text + json.dumps(first) + "\n" + '{"impl": "torn', encoding="utf-8")
    frame = load_results(folder)
    assert len(frame) == len(text.splitlines())
    assert 123.0 in set(frame["time_ms"])


def test_pytest_benchmark_json_loads(tmp_path: Path) -> None:
    path = DATA / "pytest_benchmark.json"
    frame = load_results(path)
    raw = json.loads(path.read_text(encoding="utf-8"))["benchmarks"]
    assert len(frame) == len(raw) == 6
    assert set(frame["status"]) == {"ok"} and set(frame["impl"]) == {"sdpa", "naive"}
    assert set(frame["machine"]) == {"ci-box"}
    first = frame.iloc[0]
    assert first["samples_ms"] == pytest.approx([s * 1e3 for s in raw[0]["stats"]["data"]])
    assert first["time_ms"] == pytest.approx(raw[0]["stats"]["median"] * 1e3)
    assert first["time_q1_ms"] == pytest.approx(raw[0]["stats"]["q1"] * 1e3)
    assert (first["seq_len"], first["heads"], first["head_dim"]) == (512, 8, 64)
    assert first["gflops"] == pytest.approx(4 * 8 * 512 * 512 * 64 / (first["time_ms"] / 1e3) / 1e9)
    report = write_report([path], tmp_path)
    page = report.read_text(encoding="utf-8")
    assert "sdpa" in page and "naive" in page and 'id="summary"' in page


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such result folder"):
        load_results(tmp_path / "nope")


def test_nothing_ran_ok_still_reports(tmp_path: Path) -> None:
    folder = tmp_path / "failed_run"
    folder.mkdir()
    shutil.copy(DATA / "sweep" / "run.json", folder / "run.json")
    bad = [
        line
        for line in (DATA / "sweep" / "results.jsonl").read_text(encoding="utf-8").splitlines()
        if json.loads(line)["status"] != "ok"
    ]
    (folder / "results.jsonl").write_text("\n".join(bad) + "\n", encoding="utf-8")
    page = write_report([folder]).read_text(encoding="utf-8")
    assert "no exact implementation ran ok" in page and "<img" not in page


def test_markup_and_mathtext_in_names_do_not_break_plots(tmp_path: Path) -> None:
    """A plugin name with ``$`` (matplotlib mathtext) or markup is drawn as plain text."""
    doc = json.loads((DATA / "pytest_benchmark.json").read_text(encoding="utf-8"))
    for bench in doc["benchmarks"]:
        if bench["extra_info"]["impl"] == "naive":
            bench["extra_info"]["impl"] = "cost$x_{$model <b>"
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    page = write_report([path], tmp_path / "out").read_text(encoding="utf-8")
    assert "cost$x_{$model &lt;b&gt;" in page
    assert len(list((tmp_path / "out" / "plots").glob("time_*.png"))) == 1


def test_decoding_sweeps_the_key_length_and_a_full_grid_is_2d(tmp_path: Path) -> None:
    """Query length 1 against growing keys is drawn and fitted against Nk (not held to N claims);
    a full heads × head-dim grid gets one 2-D heatmap per implementation."""
    write_report([DATA / "shapes"], tmp_path)
    summary_csv = pd.read_csv(tmp_path / "tables" / "summary.csv")
    decode = summary_csv[summary_csv["group"].str.endswith("Nq=1")]
    assert list(decode["length"]) == ["Nk=1024", "Nk=2048", "Nk=4096", "Nk=8192", "Nk=16384"]
    scaling = pd.read_csv(tmp_path / "tables" / "scaling.csv").set_index("impl")
    assert scaling.loc["sdpa", "sizes"] == "Nk 1024–16384 (5 sizes)"
    assert scaling.loc["sdpa", "time_slope"] == pytest.approx(1.0, abs=0.05)  # linear in the cache length
    assert scaling["time_claim"].isna().all() and not scaling["time_flag"].any()
    assert scaling.loc["sdpa", "memory_fit"] == "0.00 ± 0.00"
    plots = {p.name for p in (tmp_path / "plots").glob("*.png")}
    assert "time_0.png" in plots and "heatmap_heads_head_dim_0.png" in plots
    assert not any(p.startswith(("heatmap_heads_0", "heatmap_head_dim_0")) for p in plots)


def test_recorded_runner_output(tmp_path: Path) -> None:
    """A folder the runner really wrote (tests/status_plugins, every status once at least)."""
    folder = RECORDED / "every_status"
    frame = load_results(folder)
    assert set(frame["status"]) == set(STATUSES) - {"unchecked"}  # recorded before that status existed
    page = write_report([folder], tmp_path).read_text(encoding="utf-8")
    for status in set(STATUSES) - {"unchecked"}:
        assert f'<td class="st st-{status}" title="{status}' in page
    summary_csv = pd.read_csv(tmp_path / "tables" / "summary.csv")
    assert set(summary_csv["fastest"]) == {"good_sdpa"}  # the baseline: 1× by definition
    assert set(summary_csv["speedup"]) == {1.0}


@pytest.mark.slow
def test_generated_data_is_labelled_as_generated(tmp_path: Path) -> None:
    """Made-up fixtures say so in their run.json, and the report says so before anything else."""
    info = json.loads((DATA / "sweep" / "run.json").read_text(encoding="utf-8"))
    assert info["generated"] is True
    page = write_report([DATA / "sweep"], tmp_path).read_text(encoding="utf-8")
    assert "holds generated data" in page and "no figure of it was measured" in page
    recorded = json.loads((RECORDED / "every_status" / "run.json").read_text(encoding="utf-8"))
    assert not recorded.get("generated")
    page = write_report([RECORDED / "every_status"], tmp_path / "recorded").read_text(encoding="utf-8")
    assert "holds generated data" not in page


def test_summary_on_a_busy_machine_ranks_by_time_relative_to_the_interleaved_baseline(tmp_path: Path) -> None:
    """The case the summary used to get wrong: the baseline (sdpa) took 11.3 ms beside one
    implementation and 212 ms beside another, because the machine's load changed. Ranking by each
    one's own median named the wrong one fastest; relative to the baseline timed beside it, the
    ranking does not depend on when each ran."""
    from attnbench.measure.records import Record, RecordWriter

    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"suite": {"name": "busy", "baseline": "sdpa"}, "generated": True}))
    case = {"seq_len": 1024, "heads": 8, "head_dim": 64, "causal": True}
    #            impl, its median, the baseline's median beside it
    timed = [("sdpa", 97.0, None), ("sdpa_flash", 194.0, 212.0), ("flex", 27.5, 28.6), ("chunked", 15.0, 11.3)]
    with RecordWriter(folder / "results.jsonl") as writer:
        for impl, ms, base in timed:
            writer.write(
                Record(
                    impl,
                    "ok",
                    case=case,
                    exact=True,
                    checks=["output"],
                    time_ms=ms,
                    samples_ms=[ms] * 5,
                    baseline="sdpa",
                    baseline_time_ms=base,
                    baseline_samples_ms=[] if base is None else [base] * 5,
                    speedup=None if base is None else base / ms,
                )
            )
    write_report([folder], tmp_path / "report")
    (row,) = pd.read_csv(tmp_path / "report" / "tables" / "summary.csv").to_dict("records")
    relative = {impl: ms / (base or 97.0) for impl, ms, base in timed}
    assert row["fastest"] == min(relative, key=relative.__getitem__) == "sdpa_flash"
    assert row["ranked_by"] == "time relative to the interleaved baseline"
    assert row["baseline_spread"] > 1.0  # the baseline's medians: 11.3 to 212 ms
    assert row["time_ms"] == pytest.approx(194.0 / 212.0 * row["baseline_ms"])
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "baseline varied" in page


def test_report_on_a_folder_with_no_results_exits_2(tmp_path: Path) -> None:
    from cli_helpers import attnbench

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = attnbench("report", str(empty))
    assert proc.returncode == 2 and "holds no results" in proc.stderr and "Traceback" not in proc.stderr
    assert not (empty / "report.html").exists()
