"""Suites from a model's own shapes: a config.json or a shipped preset becomes a suite of exactly
the model's heads, KV heads, head dim and window, covering prefill, decode and training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import attnbench

from attnbench.measure.records import read_records
from attnbench.sweep.models import ModelConfigError, load_config, presets, shapes_of, suite_text
from attnbench.sweep.suite import parse_suite

MISTRAL_LIKE = {
    "model_type": "mistral",
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "sliding_window": 4096,
    "torch_dtype": "bfloat16",
}


def write(tmp_path: Path, config: dict[str, object]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def test_a_config_becomes_a_suite_of_exactly_its_shapes(tmp_path: Path) -> None:
    path = write(tmp_path, MISTRAL_LIKE)
    out = tmp_path / "model.toml"
    proc = attnbench("suite", "--model", str(path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    suite = parse_suite(out.read_text(encoding="utf-8"), str(out))
    cases = suite.cases(["cpu"])
    assert {(c.heads, c.kv_heads, c.head_dim, c.window, c.dtype) for c in cases} == {(32, 8, 128, 4096, "bfloat16")}
    assert {c.mode for c in cases} == {"forward", "decode", "forward_backward"}
    assert max(c.seq_len for c in cases if c.mode == "forward") == 32768  # prefill up to the context
    assert max(c.kv_len for c in cases if c.mode == "decode") == 32768  # caches up to the context
    assert {c.batch for c in cases if c.mode == "decode"} == {1, 8}
    assert all(c.causal for c in cases)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"num_attention_heads": None}, "num_attention_heads"),
        ({"num_key_value_heads": 5}, "num_key_value_heads"),
        ({"hidden_size": None}, "head_dim"),
        ({"max_position_embeddings": "long"}, "max_position_embeddings"),
    ],
)
def test_a_config_that_cannot_describe_attention_exits_2_naming_the_key(
    tmp_path: Path, change: dict[str, object], key: str
) -> None:
    config = {k: v for k, v in {**MISTRAL_LIKE, **change}.items() if v is not None}
    proc = attnbench("suite", "--model", str(write(tmp_path, config)))
    assert proc.returncode == 2, proc.stdout
    assert key in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_every_preset_cites_its_source_and_makes_a_valid_suite() -> None:
    assert {"llama-3.1-8b", "mistral-7b", "gemma-2-9b", "qwen-2.5-7b", "gpt2", "bert-base", "vit-b-16"} <= set(
        presets()
    )
    for name in presets():
        title, config = load_config(name)
        assert str(config["_source"]).startswith("https://huggingface.co/"), name
        shapes = shapes_of(title, config)
        parse_suite(suite_text(shapes), name)


def test_preset_shapes_match_the_models() -> None:
    def shapes(name: str):  # type: ignore[no-untyped-def]
        return shapes_of(*load_config(name))

    assert (shapes("llama-3.1-8b").heads, shapes("llama-3.1-8b").kv_heads, shapes("llama-3.1-8b").head_dim) == (
        32,
        8,
        128,
    )
    assert shapes("mistral-7b").window == 4096 and shapes("mistral-7b").context == 32768
    gemma = shapes("gemma-2-9b")
    assert gemma.alternating_window and gemma.window == 4096 and gemma.head_dim == 256
    assert shapes("qwen-2.5-7b").window == 0 and shapes("qwen-2.5-7b").kv_heads == 4  # use_sliding_window false
    assert (shapes("gpt2").heads, shapes("gpt2").head_dim, shapes("gpt2").context) == (12, 64, 1024)
    bert = shapes("bert-base")
    assert not bert.causal and not bert.decodes and bert.context == 512
    vit = shapes("vit-b-16")
    assert vit.lengths == [197] and not vit.causal
    text = suite_text(gemma)
    assert "window = [0, 4096]" in text  # local and global layers both


def test_an_unknown_model_is_a_usage_error() -> None:
    with pytest.raises(ModelConfigError, match="presets: "):
        load_config("no-such-model")
    proc = attnbench("run", "--model", "no-such-model")
    assert proc.returncode == 2 and "no such config file or preset" in proc.stderr


@pytest.mark.slow
def test_run_model_runs_the_models_suite_directly(tmp_path: Path) -> None:
    tiny = {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 256}
    out = tmp_path / "run"
    proc = attnbench("run", "--model", str(write(tmp_path, tiny)), "--only", "sdpa", "--out", str(out), "--no-report")
    assert proc.returncode == 0, proc.stderr
    records = read_records(out / "results.jsonl")
    assert {r["mode"] for r in records} == {"forward", "decode", "forward_backward"}
    assert all(r["status"] == "ok" for r in records), [(r["mode"], r["reason"]) for r in records]
