"""Suites are validated before anything runs: every mistake is exit code 2 and one message."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnbench.cli import main
from attnbench.plugins.registry import load_registry
from attnbench.sweep.suite import SUITES_DIR, SuiteError, load_suite, parse_suite

GOOD = """
[suite]
implementations = ["naive"]
[grid]
seq_len = [128]
"""


def test_only_implementations_and_seq_len_are_required() -> None:
    suite = parse_suite(GOOD, "mini.toml", ["naive", "sdpa"])
    assert suite.name == "mini"
    assert suite.baseline == "sdpa"
    assert suite.grids[0]["dtype"] == ["float32", "bfloat16"]
    assert suite.grids[0]["causal"] == [False, True]
    assert suite.budget["timeout_s"] == 60
    cases = suite.cases(["cpu"], cores=2)
    assert len(cases) == 4  # 2 dtypes x 2 causal
    assert {c.kv_heads for c in cases} == {8}


def test_sequence_lengths_vary_fastest_and_ascending() -> None:
    text = GOOD.replace("seq_len = [128]", "seq_len = [512, 128, 256]\ncausal = [false]\ndtype = ['float32']")
    cases = parse_suite(text, "s.toml").cases(["cpu"], cores=2)
    assert [c.seq_len for c in cases] == [128, 256, 512]


def test_auto_expands_to_what_this_machine_has() -> None:
    text = GOOD + 'device = "auto"\ndtype = "auto"\nthreads = "auto"\ncausal = [false]\n'
    cases = parse_suite(text, "hw.toml").cases(["cpu"], cores=4)
    assert {c.threads for c in cases} == {1, 2, 4}
    assert {c.dtype for c in cases} == {"float32", "bfloat16", "float16"}
    assert {c.device for c in cases} == {"cpu"}


BAD_SUITES = {
    "syntax": ("[suite]\nimplementations = [\n[grid]\nseq_len = [1]\n", "line"),
    "unknown_key": (GOOD + "sequence = [1]\n", "grid.sequence"),
    "unknown_table": (GOOD + "[extra]\nx = 1\n", "unknown key extra"),
    "wrong_type": (GOOD.replace("[128]", '["long"]'), "grid.seq_len"),
    "bool_as_int": (GOOD + "batch = [true]\n", "grid.batch"),
    "empty_axis": (GOOD + "head_dim = []\n", "grid.head_dim is empty"),
    "out_of_range": (GOOD + "heads = [0]\n", "grid.heads"),
    "negative_budget": (GOOD + "[budget]\ntimeout_s = -1\n", "budget.timeout_s"),
    "unknown_impl": (GOOD.replace('["naive"]', '["naiive"]'), "did you mean 'naive'"),
    "unknown_baseline": (GOOD.replace("[suite]", '[suite]\nbaseline = "spda"'), "suite.baseline"),
    "unknown_dtype": (GOOD + 'dtype = ["float8"]\n', "grid.dtype"),
    "unknown_device": (GOOD + 'device = ["tpu"]\n', "grid.device"),
    "bad_layout": (GOOD + 'layout = ["bigbird:blok=3"]\n', "grid.layout"),
    "kv_heads_divide": (GOOD + "heads = [8]\nkv_heads = [3]\n", "does not divide"),
    "missing_seq_len": ("[suite]\nimplementations = 'all'\n", "grid.seq_len is required"),
    "missing_impls": ("[grid]\nseq_len = [1]\n", "suite.implementations is required"),
}


@pytest.mark.parametrize("name", sorted(BAD_SUITES))
def test_malformed_suite_exits_2_with_one_message(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, expected = BAD_SUITES[name]
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    out = tmp_path / "out"
    code = main(["run", str(path), "--out", str(out), "--no-report"])
    err = capsys.readouterr().err
    assert code == 2
    assert str(path) in err
    assert expected in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing written


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"line 3"):
        parse_suite("[suite]\nimplementations = [\n[grid]\n", "x.toml")


def test_unknown_suite_name_lists_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "no_such_suite", "--no-report"]) == 2
    assert "smoke" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(SUITES_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_suite_is_valid(path: Path) -> None:
    registry = load_registry()
    suite = load_suite(str(path), registry.names())
    assert suite.cases(["cpu"], cores=2)


def test_a_grid_names_its_own_baseline_or_none() -> None:
    text = GOOD + '[[grid]]\nbaseline = ""\nseq_len = [256]\n'
    suite = parse_suite(text.replace("[grid]", "[[grid]]", 1), "b.toml", ["naive", "sdpa"])
    baselines = suite.baselines(["cpu"], cores=2)
    assert {c.seq_len: b for c, b in baselines.items()} == {128: "sdpa", 256: ""}
    text = text.replace("[grid]", "[[grid]]", 1)
    misspelt = r"grid\[1\]\.baseline: unknown implementation 'sdpaa' \(did you mean 'sdpa'\?\)"
    with pytest.raises(SuiteError, match=misspelt):
        parse_suite(text.replace('baseline = ""', 'baseline = "sdpaa"'), "b.toml", ["naive", "sdpa"])
    with pytest.raises(SuiteError, match=r"grid\[1\]\.baseline = 3: expected"):
        parse_suite(text.replace('baseline = ""', "baseline = 3"), "b.toml")


def test_the_readme_suite_format_and_ratio_parse_as_shown() -> None:
    """The README's suite reference (every key with its default) and its [[ratio]] example are a
    valid suite together: a key renamed in the code and not in the README fails here."""
    import re

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    reference = next(b for b in blocks if "[suite]" in b and "[budget]" in b)
    example = next(b for b in blocks if "[[ratio]]" in b)
    suite = parse_suite(reference + "\n" + example, "README.md", load_registry().names())
    (declared,) = suite.ratios
    assert (declared.impl, declared.peer, declared.at_least) == ("sliding_window", "sdpa", 17.0)
    assert declared.peer_case == {"window": 0} and declared.where["seq_len"] == [16384]
