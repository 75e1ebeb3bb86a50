"""Shards for any batch scheduler and ``attnbench merge``: a deterministic, balanced split that
keeps case groups whole; merged shards equal the unsharded run; merge refuses shards of other
suites and a pair recorded twice, and names the pairs still missing, which ``--resume`` runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import attnbench

from attnbench.case.problem import Problem
from attnbench.measure.records import Record, read_records, record_key
from attnbench.plugins.catalog import Catalog
from attnbench.plugins.registry import load_registry
from attnbench.results.compare import compare_runs
from attnbench.results.read import load_results
from attnbench.results.report import write_report
from attnbench.sweep.estimate import pair_seconds as predicted_seconds
from attnbench.sweep.merge import MergeError, merge
from attnbench.sweep.pairs import read_pairs
from attnbench.sweep.runner import Failures, RunError, Runner, suite_hash
from attnbench.sweep.shards import Shard, parse_shard, plan, split
from attnbench.sweep.suite import parse_suite

HERE = Path(__file__).resolve().parent
PLUGIN = HERE / "status_plugins" / "misbehaving.py"

TINY = HERE / "status_plugins" / "tiny.toml"  # with misbehaving.py: ok, unsupported, unavailable, crashed, skipped
BUDGET = {"timeout_s": 60.0, "min_time_s": 0.2, "max_time_s": 2.0, "min_repeats": 5}


def grid_pairs(lengths: list[int], impls: list[str], **fields: Any) -> list[tuple[Problem, str]]:
    """Pairs in suite order: lengths fastest, within each (fields, impl) group."""
    causal = fields.pop("causal", [False, True])
    return [
        (Problem(seq_len=n, causal=c, **fields), impl)
        for c in causal
        for n in lengths
        for impl in impls  # as Suite.pairs orders them: every implementation per case
    ]


# -- the split ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0/8", "9/8", "1/0", "x", "1/", "-1/2", "1.5/2"])
def test_a_bad_shard_is_one_sentence(text: str) -> None:
    with pytest.raises(ValueError, match="expected I/N with 1 <= I <= N") as exc:
        parse_shard(text)
    assert "\n" not in str(exc.value)


def test_a_shard_is_parsed() -> None:
    assert parse_shard("2/8") == Shard(2, 8)
    assert str(parse_shard(" 8 / 8 ")) == "8/8"


def test_the_parts_are_disjoint_complete_deterministic_and_in_suite_order() -> None:
    pairs = grid_pairs([64, 128, 256, 512], ["a", "b", "c"], heads=2)
    for count in (1, 2, 3, 5, 30):
        parts = split(pairs, count, BUDGET)
        assert len(parts) == count
        flat = [p for part in parts for p in part]
        assert sorted(map(repr, flat)) == sorted(map(repr, pairs))  # every pair exactly once
        assert split(list(pairs), count, dict(BUDGET)) == parts  # the same on every machine
        for part in parts:
            assert part == [p for p in pairs if p in part]  # the suite's order


def test_a_case_group_is_never_divided() -> None:
    pairs = grid_pairs([64, 128, 256, 512, 1024], ["a", "b"])
    for count in (2, 3, 4):
        parts = split(pairs, count, BUDGET)
        owner = {}
        for index, part in enumerate(parts):
            for case, impl in part:
                group = Failures.group({"impl": impl, **case.fields()})
                assert owner.setdefault(group, index) == index, f"{group} split across shards"


def test_parts_are_balanced_by_predicted_cost() -> None:
    # One group of large cases costs as much as several groups of small ones.
    pairs = grid_pairs([8192, 16384], ["big"], causal=[False]) + grid_pairs([64, 128], list("abcdefgh"))
    parts = split(pairs, 2, BUDGET)
    loads = [sum(predicted_seconds(c, BUDGET) for c, _ in part) for part in parts]
    biggest = max(
        sum(predicted_seconds(c, BUDGET) for c, i in pairs if Failures.group({"impl": i, **c.fields()}) == g)
        for g in {Failures.group({"impl": i, **c.fields()}) for c, i in pairs}
    )
    assert abs(loads[0] - loads[1]) <= biggest
    counts = [len(part) for part in parts]
    assert counts[0] != counts[1], "balanced by cost, not by the number of pairs"
    assert predicted_seconds(Problem(seq_len=16384), BUDGET) > predicted_seconds(Problem(seq_len=64), BUDGET)


def test_more_shards_than_groups_leaves_some_empty() -> None:
    pairs = grid_pairs([64, 128], ["a"])  # two groups
    parts = split(pairs, 4, BUDGET)
    assert sorted(len(p) for p in parts) == [0, 0, 2, 2]


def test_the_plan_names_every_pair_and_its_shard() -> None:
    pairs = grid_pairs([64, 128], ["a", "b"])
    entries = plan(pairs, 3, BUDGET)
    assert len(entries) == len(pairs)
    for index in (1, 2, 3):
        mine = Shard(index, 3).select(pairs, BUDGET)
        assert [record_key(e) for e in entries if e["shard"] == index] == [
            record_key({"impl": i, **c.fields()}) for c, i in mine
        ]


# -- merge of made-up shard folders -----------------------------------------------------------------


def make_shard(out: Path, suite_text: str, shard: Shard | None, statuses: dict[str, str] | None = None) -> None:
    """A result folder as ``run --shard`` writes it, without running anything."""
    suite = parse_suite(suite_text, "made-up.toml")
    pairs = suite.pairs(["naive", "sdpa"], ["cpu"])
    mine = shard.select(pairs, suite.budget) if shard else pairs
    out.mkdir(parents=True)
    info = {
        "suite": {"name": suite.name, "text": suite.text, "hash": suite_hash(suite.text)},
        "machine": {"id": f"node{shard.index if shard else 0}-cpu", "hostname": f"node{shard.index if shard else 0}"},
        "calibration": [{"device": "cpu", "dtype": "float32", "requested_threads": 0, "gflops": 100.0}],
        "started": "2026-01-01T00:00:00+00:00",
        "ended": "2026-01-01T01:00:00+00:00",
        "shard": shard.as_dict() if shard else None,
        **({"plan": plan(pairs, shard.count, suite.budget)} if shard else {}),
    }
    (out / "run.json").write_text(json.dumps(info))
    with (out / "results.jsonl").open("w") as fh:
        for case, impl in mine:
            status = (statuses or {}).get(impl, "ok")
            fh.write(Record(impl=impl, status=status, case=case.fields(), time_ms=1.0).to_json() + "\n")


SMALL = """
[suite]
name = "small"
implementations = ["naive", "sdpa"]
[grid]
heads = [1]
seq_len = [64, 128]
head_dim = [16]
dtype = ["float32"]
causal = [false, true]
"""


def test_merged_shards_are_one_result_folder_of_the_whole_suite(tmp_path: Path) -> None:
    for i in (1, 2, 3):
        make_shard(tmp_path / f"s{i}", SMALL, Shard(i, 3))
    make_shard(tmp_path / "whole", SMALL, None)
    merged = merge([tmp_path / f"s{i}" for i in (3, 1, 2)], tmp_path / "merged")
    assert merged.missing == [] and merged.records == 8
    rows = read_records(tmp_path / "merged" / "results.jsonl")
    whole = read_records(tmp_path / "whole" / "results.jsonl")
    assert [record_key(r) for r in rows] == [record_key(r) for r in whole]  # the suite's order
    info = json.loads((tmp_path / "merged" / "run.json").read_text())
    assert info["shard"] is None
    assert info["suite"]["hash"] == suite_hash(SMALL)
    assert [m["folder"] for m in info["merged_from"]] == [str(tmp_path / f"s{i}") for i in (3, 1, 2)]
    assert sum(m["records"] for m in info["merged_from"]) == 8
    assert info["machine"]["id"] == "3 machines (cpu)"  # the report's label for the merged folder
    assert {c["host"] for c in info["calibration"]} == {"node1", "node2", "node3"}
    assert len(load_results(tmp_path / "merged")) == 8


def test_merge_lists_the_pairs_no_shard_recorded(tmp_path: Path) -> None:
    make_shard(tmp_path / "s1", SMALL, Shard(1, 2))
    merged = merge([tmp_path / "s1"], tmp_path / "merged")
    suite = parse_suite(SMALL, "x")
    expected = Shard(2, 2).select(suite.pairs(["naive", "sdpa"], ["cpu"]), suite.budget)
    assert len(merged.missing) == len(expected) > 0
    assert all(shard == Shard(2, 2) for _, shard in merged.missing)
    assert {name.split(" on ")[0] for name, _ in merged.missing} == {i for _, i in expected}


def test_merge_refuses_shards_of_different_suites(tmp_path: Path) -> None:
    make_shard(tmp_path / "a", SMALL, Shard(1, 2))
    make_shard(tmp_path / "b", SMALL.replace("[64, 128]", "[64, 256]"), Shard(2, 2))
    with pytest.raises(MergeError) as exc:
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    message = str(exc.value)
    assert str(tmp_path / "a") in message and str(tmp_path / "b") in message and "different suites" in message
    assert not (tmp_path / "merged").exists()


def test_merge_refuses_a_pair_recorded_twice(tmp_path: Path) -> None:
    make_shard(tmp_path / "a", SMALL, Shard(1, 2))
    make_shard(tmp_path / "b", SMALL, None)  # the whole suite: it holds shard 1's pairs too
    with pytest.raises(MergeError, match=r"the pair \w+ on forward fp32 cpu B1 H1 N64 D16 .*recorded in both") as exc:
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    assert str(tmp_path / "a") in str(exc.value) and str(tmp_path / "b") in str(exc.value)


def test_merge_keeps_a_resumed_shards_last_record(tmp_path: Path) -> None:
    make_shard(tmp_path / "a", SMALL, Shard(1, 2), {"naive": "crashed", "sdpa": "crashed"})
    again = [Record.from_dict({**r, "status": "ok"}).to_json() for r in read_records(tmp_path / "a" / "results.jsonl")]
    with (tmp_path / "a" / "results.jsonl").open("a") as fh:
        fh.write("\n".join(again) + "\n")
    merge([tmp_path / "a"], tmp_path / "merged")
    rows = read_records(tmp_path / "merged" / "results.jsonl")
    assert rows and {r["status"] for r in rows} == {"ok"}


def test_merge_refuses_an_out_folder_with_results_or_among_its_inputs(tmp_path: Path) -> None:
    make_shard(tmp_path / "a", SMALL, Shard(1, 2))
    make_shard(tmp_path / "b", SMALL, Shard(2, 2))
    with pytest.raises(MergeError, match="already holds results"):
        merge([tmp_path / "a"], tmp_path / "b")
    with pytest.raises(MergeError, match="one of the folders to merge"):
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "a")
    with pytest.raises(MergeError, match="no such result folder"):
        merge([tmp_path / "a", tmp_path / "nothing"], tmp_path / "merged")


def test_the_merge_command_exits_2_on_shards_of_different_suites(tmp_path: Path) -> None:
    make_shard(tmp_path / "a", SMALL, Shard(1, 2))
    make_shard(tmp_path / "b", SMALL.replace('name = "small"', 'name = "other"'), Shard(2, 2))
    proc = attnbench("merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "merged"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "'small'" in proc.stderr and "'other'" in proc.stderr and str(tmp_path / "a") in proc.stderr


# -- real runs: shards 1/2 and 2/2 merged equal the whole ----------------------------------------


def statuses(folder: Path) -> dict[tuple[Any, ...], str]:
    rows = read_records(folder / "results.jsonl")
    keys = [record_key(r) for r in rows]
    assert len(keys) == len(set(keys)), f"{folder}: a pair recorded twice"
    return {record_key(r): r["status"] for r in rows}


@pytest.mark.slow
def test_shards_merged_equal_the_unsharded_run(tmp_path: Path) -> None:
    for name, extra in (("whole", []), ("s1", ["--shard", "1/2"]), ("s2", ["--shard", "2/2"])):
        proc = attnbench(
            "run", str(TINY), "--plugin", str(PLUGIN), "--out", str(tmp_path / name), "--no-report", *extra
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    whole, s1, s2 = (statuses(tmp_path / name) for name in ("whole", "s1", "s2"))
    assert s1 and s2 and not set(s1) & set(s2)
    info = json.loads((tmp_path / "s2" / "run.json").read_text())
    assert info["shard"] == {"index": 2, "count": 2}
    assert info["suite"]["hash"] == suite_hash(TINY.read_text())
    assert {"ok", "unsupported", "unavailable", "crashed", "skipped"} <= set(whole.values())

    for name in ("s1", "s2"):  # a shard's paired timings, of its own records, join the merged folder
        with (tmp_path / name / "pairs.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"ratio": "r", "impl": name, "case": {}, "peer": "p", "peer_case": {}}) + "\n")
    merged = tmp_path / "merged"
    proc = attnbench("merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(merged))
    assert proc.returncode == 0, proc.stderr
    assert "missing" not in proc.stdout
    assert statuses(merged) == whole  # crashed, then skipped: the group stayed in one shard
    assert {"s1", "s2"} <= {row["impl"] for row in read_pairs(merged)}

    assert write_report([merged]).is_file()  # a report, and a comparison, as of any run
    compared = compare_runs(tmp_path / "whole", merged, 10.0, tmp_path / "cmp")
    assert compared.only_new == [] and compared.only_base == []


@pytest.mark.slow
def test_resume_on_a_merged_folder_runs_only_the_missing_pairs(tmp_path: Path) -> None:
    make_shard(tmp_path / "s1", SMALL, Shard(1, 2))
    out = tmp_path / "merged"
    merged = merge([tmp_path / "s1"], out)
    suite = parse_suite(SMALL, "x")
    second = Shard(2, 2).select(suite.pairs(["naive", "sdpa"], ["cpu"]), suite.budget)
    assert len(merged.missing) == len(second) > 0
    before = (out / "results.jsonl").read_text()

    proc = attnbench("run", "--resume", "--out", str(out), "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert (out / "results.jsonl").read_text().startswith(before)  # what was merged stays as it was
    added = read_records(out / "results.jsonl")[len(before.splitlines()) :]
    assert {record_key(r) for r in added} == {record_key({"impl": i, **c.fields()}) for c, i in second}
    assert len(statuses(out)) == 8


def test_a_shard_folder_resumes_as_its_own_shard_only(tmp_path: Path) -> None:
    make_shard(tmp_path / "s1", SMALL, Shard(1, 2))
    registry = load_registry()
    catalog = Catalog.from_description({"declarations": [registry.get(n).declaration() for n in ("naive", "sdpa")]})
    suite = parse_suite(SMALL, "small.toml", catalog.known())
    before = (tmp_path / "s1" / "run.json").read_text()
    with pytest.raises(RunError, match="holds shard 1/2, not shard 2/2; resume it without --shard"):
        Runner(suite, catalog, tmp_path / "s1", resume=True, shard=Shard(2, 2), progress=False).run()
    assert Runner(suite, catalog, tmp_path / "s1", resume=True, progress=False).shard == Shard(1, 2)  # its own
    assert (tmp_path / "s1" / "run.json").read_text() == before
