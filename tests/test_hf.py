"""transformers' attention functions as ``hf:NAME`` implementations, and ``attnbench profile``.

The ``hf:`` functions are judged against the float64 reference as every implementation is, in
every mode they take; a wrapping mistake a user could make (SDPA's top-left ``is_causal`` on a
cross case, a window whose mask transformers' SDPA path skips) is planted and caught. The names
transformers registers are held to the list attnbench knows, so a release that adds or renames
one fails here rather than vanishing from ``attnbench list``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from attnbench import Problem
from attnbench.measure.verify import check
from attnbench.plugins.registry import load_registry
from tests.cli_helpers import attnbench

transformers = pytest.importorskip("transformers")

HERE = Path(__file__).parent
WRONG_WRAPS = HERE / "plugins" / "hf_wrapped_wrong.py"


def test_the_names_transformers_registers_are_the_ones_attnbench_knows() -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from attnbench.implementations.hf import KNOWN, hf_name

    registered = {*ALL_ATTENTION_FUNCTIONS.keys(), "eager"}
    assert registered == set(KNOWN), f"transformers {transformers.__version__} registers {sorted(registered)}"
    names = {impl.name for impl in load_registry().implementations()}
    assert {hf_name(k) for k in KNOWN} <= names


def test_list_shows_each_hf_function_with_its_availability_and_reason() -> None:
    proc = attnbench("list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    for name in ("hf:sdpa", "hf:eager", "hf:flex_attention"):
        assert rows[name]["available"] and rows[name]["library"] == "transformers"
    for n in (2, 3, 4):
        row = rows[f"hf:flash_attention_{n}"]
        assert not row["available"] and ("CUDA" in row["reason"] or f"is_flash_attn_{n}_available" in row["reason"])
    assert not rows["hf:paged:eager"]["available"] and "PagedAttentionCache" in rows["hf:paged:eager"]["reason"]


CASES = {
    "full": Problem(batch=2, heads=4, seq_len=96, head_dim=64),
    "causal": Problem(batch=2, heads=4, seq_len=96, head_dim=64, causal=True),
    "gqa-causal-cross-bf16": Problem(
        batch=2, heads=8, kv_heads=2, seq_len=64, kv_len=160, head_dim=64, causal=True, dtype="bfloat16"
    ),
    "window-causal": Problem(heads=4, kv_heads=2, seq_len=200, head_dim=32, window=24, causal=True),
    "window-bidirectional": Problem(heads=2, seq_len=150, head_dim=32, window=20),
    "window-causal-cross": Problem(heads=2, seq_len=90, kv_len=150, head_dim=32, window=33, causal=True),
    "long-bf16-gqa": Problem(heads=8, kv_heads=2, seq_len=2048, head_dim=64, causal=True, dtype="bfloat16"),
}
GRADIENTS = {
    "causal-fwd-bwd": Problem(batch=2, heads=4, seq_len=96, head_dim=64, causal=True, mode="forward_backward"),
    "gqa-causal-cross-bf16-fwd-bwd": Problem(
        heads=8, kv_heads=2, seq_len=64, kv_len=160, head_dim=64, causal=True, dtype="bfloat16", mode="forward_backward"
    ),
    "window-backward": Problem(heads=2, seq_len=150, head_dim=32, window=20, causal=True, mode="backward"),
}
DECODE = {
    "decode-uniform": Problem(batch=2, heads=8, kv_heads=2, seq_len=1, kv_len=300, head_dim=64, mode="decode"),
    "decode-ragged": Problem(
        batch=3, heads=8, kv_heads=2, seq_len=1, kv_len=300, head_dim=64, mode="decode", kv_lengths="ragged"
    ),
    "decode-ragged-window": Problem(
        batch=3,
        heads=4,
        kv_heads=1,
        seq_len=2,
        kv_len=257,
        head_dim=32,
        window=64,
        causal=True,
        mode="decode",
        kv_lengths="ragged",
    ),
}


@pytest.mark.parametrize("name", ["hf:sdpa", "hf:eager"])
@pytest.mark.parametrize("case", [*CASES, *GRADIENTS, *DECODE])
def test_sdpa_and_eager_are_exact_in_every_mode(name: str, case: str) -> None:
    impl = load_registry().get(name)
    problem = {**CASES, **GRADIENTS, **DECODE}[case]
    assert impl.supports(problem) is None
    result = check(impl, problem)
    assert result.ok, f"{name} on {case}: {result.failures()}"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["causal", "gqa-causal-cross-bf16", "window-causal", "decode-uniform"])
def test_flex_attention_is_exact_forward_and_says_why_not_backward(case: str) -> None:
    impl = load_registry().get("hf:flex_attention")
    problem = {**CASES, **DECODE}[case]
    result = check(impl, problem)
    assert result.ok, f"hf:flex_attention on {case}: {result.failures()}"
    reason = impl.supports(GRADIENTS["causal-fwd-bwd"])
    assert reason is not None and "CUDA only" in reason


@pytest.mark.parametrize(
    ("name", "case", "tensors"),
    [
        ("top_left_causal", "gqa-causal-cross-bf16", "output"),
        ("top_left_causal", "window-causal-cross", "output"),
        ("window_without_local_size", "window-causal", "output"),
    ],
)
def test_a_wrapping_mistake_is_caught_as_inaccurate(name: str, case: str, tensors: str) -> None:
    """A plugin that calls transformers' sdpa_attention_forward the way a hand wrapping gets it
    wrong: ``is_causal`` with no mask on a cross case (SDPA aligns it top-left, and transformers
    then drops the keys past the queries' count), or the window's mask built without the
    ``local_size`` transformers passes (its SDPA path then skips the mask as plain causal)."""
    impl = load_registry([str(WRONG_WRAPS)]).get(name)
    result = check(impl, CASES[case])
    assert not result.ok and tensors in result.failures()


def test_the_model_suite_names_the_functions_its_family_dispatches_to() -> None:
    proc = attnbench("suite", "--model", "llama-3.1-8b")
    assert proc.returncode == 0, proc.stderr
    for name in ("hf:sdpa", "hf:eager", "hf:flex_attention", "hf:flash_attention_2"):
        assert name in proc.stdout
    from attnbench.sweep.suite import parse_suite

    suite = parse_suite(proc.stdout, "llama.toml")
    names = load_registry().names()
    assert {"hf:sdpa", "hf:eager", "sdpa", "chunked"} <= set(suite.impl_names(names))


def test_profile_of_sdpa_holds_the_fused_kernel_and_accounts_for_the_call(tmp_path: Path) -> None:
    proc = attnbench("profile", "sdpa", "--case", "seq_len=2048", "--calls", "3", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    trace = json.loads((tmp_path / "trace.json").read_text())  # Chrome trace JSON: what Perfetto opens
    events = trace["traceEvents"]
    assert any(e.get("name") == "aten::_scaled_dot_product_flash_attention_for_cpu" for e in events)
    assert sum(e.get("name", "").startswith("attnbench call") for e in events) == 3
    summary = json.loads((tmp_path / "profile.json").read_text())
    kernel = {row["name"]: row for row in summary["top"]}["aten::_scaled_dot_product_flash_attention_for_cpu"]
    assert kernel["total_share"] >= 0.9 and summary["top"][0]["name"] == kernel["name"]
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in proc.stdout and "trace:" in proc.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["nope"], "unknown implementation 'nope'"),
        (["sdpa", "--case", "seq_len=abc"], "seq_len must be an integer"),
        (["sdpa", "--case", "colour=red"], "is not KEY=VALUE"),
        (["block_sparse", "--case", "seq_len=256"], "does not run this case"),
        (["sdpa", "--calls", "0"], "--calls and --top must be at least 1"),
    ],
)
def test_profile_refuses_bad_input_in_one_sentence(args: list[str], words: str, tmp_path: Path) -> None:
    proc = attnbench("profile", *args, "--out", str(tmp_path / "p"))
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr


RECORDED = HERE / "data" / "recorded"


@pytest.mark.slow
@pytest.mark.parametrize("run", ["quick", "decode_b1"])
def test_a_reports_profile_command_for_a_pair_profiles_that_pair(
    run: str, tmp_path: Path, recorded_report: Callable[[str], Path]
) -> None:
    """The report of a recorded run gives each pair's ``attnbench profile`` command (records.csv)
    and each implementation's slowest (report.md); the command of the smallest ok pair of a
    library kernel, run verbatim, profiles that pair's case."""
    import shlex

    import pandas as pd

    folder = recorded_report(run)
    records = pd.read_csv(folder / "tables" / "records.csv")
    assert records["profile"].str.startswith("attnbench profile ").all()
    report = (folder / "report.md").read_text()
    assert "## Profiling a pair" in report and "`attnbench profile sdpa --case " in report
    ok = records[(records["status"] == "ok") & (records["impl"] == "sdpa")].sort_values("time_ms")
    row = ok.iloc[0]
    argv = shlex.split(row["profile"])
    proc = attnbench(*argv[1:], "--calls", "1", "--out", str(tmp_path / "profile"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "profile" / "profile.json").read_text())
    for key in ("batch", "heads", "seq_len", "head_dim", "kv_heads", "kv_len", "causal", "window", "mode"):
        assert str(summary["case"][key]).lower() == str(row[key]).lower(), key
