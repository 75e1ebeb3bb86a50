"""Multi-head latent attention's absorbed decode form (``latent``): one KV head per token whose
first ``v_head_dim`` columns are its value. The cache holds one tensor, a step reads and counts
each token's latent once, the decoders are exact on it, and values read from the wrong columns
are caught."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch

from attnbench import Problem
from attnbench.case.modes import DECODE
from attnbench.measure.bench import DecodeBench
from attnbench.measure.verify import check
from attnbench.plugins.registry import load_registry

CASES = [  # (cache, kv_lengths, seq_len, window)
    ("contiguous", "uniform", 1, 0),
    ("paged:16", "ragged", 1, 0),
    ("contiguous", "ragged", 3, 200),
    ("paged:16", "uniform", 2, 300),
]


def latent(**fields: Any) -> Problem:
    base = {
        "batch": 3, "heads": 8, "kv_heads": 1, "seq_len": 1, "kv_len": 700, "head_dim": 48, "v_head_dim": 32,
        "causal": True, "latent": True,
    }  # fmt: skip
    return Problem(**{**base, **fields, "mode": "decode"})


def judged(name: str, problem: Problem) -> Any:
    impl = load_registry().get(name)
    assert impl.supports(problem) is None, impl.supports(problem)
    return check(impl, problem, max_rows=problem.seq_len)


@pytest.mark.parametrize("cache", ["contiguous", "paged:16"])
def test_a_latent_cache_holds_one_tensor_whose_first_columns_are_the_values(cache: str) -> None:
    inputs = DECODE.make_inputs(latent(cache=cache))
    k, v = inputs.cache.k, inputs.cache.v
    assert inputs.cache.latent and v.shape[-1] == 32 and k.shape[-1] == 48
    assert v.data_ptr() == k.data_ptr() and torch.equal(v, k[..., :32])  # a view, not a copy
    assert torch.equal(inputs.v_new, inputs.k_new[..., :32])
    inputs.cache.append(inputs.k_new, inputs.v_new)  # the step's keys carry its values
    assert torch.equal(inputs.cache.v, inputs.cache.k[..., :32])


def test_a_latent_step_reads_and_counts_each_token_s_latent_once() -> None:
    """DeepSeek-V3's absorbed form: 576 columns a token (512 latent + 64 rotary), not 576 + 512."""
    problem = latent(batch=1, heads=16, kv_len=4096, head_dim=576, v_head_dim=512, dtype="bfloat16")
    cache_read = 576 * 4096 * 2  # bf16: every cached token's latent, one KV head
    queries_and_output = 16 * (576 + 512) * 2
    new = 576 * 2  # the new token's latent, written
    assert DECODE.io_bytes(problem) == cache_read + queries_and_output + new
    assert DECODE.io_bytes(problem.with_(latent=False)) == DECODE.io_bytes(problem) + 512 * (4096 + 1) * 2


def test_the_scrambled_step_negates_a_latent_s_values_with_its_keys() -> None:
    """The timed inputs are scrambled in place: values that are a view of the keys must change with
    them exactly once (negated twice they would be the original values again)."""
    inputs = DECODE.make_inputs(latent())
    before, new_before = inputs.cache.v.clone(), inputs.v_new.clone()
    bench = DecodeBench(lambda q, k_new, v_new: q, inputs)
    bench.scramble()
    assert torch.equal(inputs.cache.v, -before) and torch.equal(inputs.v_new, -new_before)
    bench.restore()
    assert torch.equal(inputs.cache.v, before) and torch.equal(inputs.v_new, new_before)


@pytest.mark.parametrize(("cache", "lengths", "seq_len", "window"), CASES)
@pytest.mark.parametrize("name", ["naive", "sdpa", "split_kv"])
def test_decoders_are_exact_on_a_latent_cache(name: str, cache: str, lengths: str, seq_len: int, window: int) -> None:
    problem = latent(cache=cache, kv_lengths=lengths, seq_len=seq_len, window=window)
    result = judged(name, problem)
    assert result.ok, result.failures()


def test_flex_is_exact_on_a_paged_ragged_latent_cache() -> None:
    result = judged("flex", latent(cache="paged:16", kv_lengths="ragged"))
    assert result.ok, result.failures()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_split_kv_decodes_deepseek_s_absorbed_form(dtype: str) -> None:
    """One latent KV head of 576 columns read by 16 query heads, values its first 512, 8K tokens."""
    problem = latent(
        batch=2, heads=16, kv_len=8192, head_dim=576, v_head_dim=512, dtype=dtype, cache="paged:16",
        kv_lengths="ragged",
    )  # fmt: skip
    result = judged("split_kv", problem)
    assert result.ok, result.failures()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_values_read_from_the_latent_s_rotary_end_are_caught(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder that keeps the latent's last v_head_dim columns of its output (the values read
    from the rotary end) where the first are the values."""
    problem = latent(batch=2, heads=16, kv_len=2048, head_dim=576, v_head_dim=512, dtype=dtype)
    assert judged("split_kv", problem).ok
    module = sys.modules[type(load_registry().get("split_kv")).__module__]
    real = module.SequencePlan.attend

    def planted(self: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        return real(self, *args, **kwargs).roll(-64, dims=-1)  # [Hkv, R, D]: columns 64.. first

    monkeypatch.setattr(module.SequencePlan, "attend", planted)
    caught = judged("split_kv", problem)
    assert not caught.ok, caught.figures()


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"mode": "forward"}, "latent.*mode decode only"),
        ({"mode": "decode", "v_head_dim": 64}, "v_head_dim 64 exceeds head_dim 48"),
    ],
)
def test_a_latent_case_that_cannot_be_is_refused_naming_the_key(fields: dict[str, Any], words: str) -> None:
    base = {"heads": 8, "kv_heads": 1, "seq_len": 1, "kv_len": 64, "head_dim": 48, "latent": True}
    with pytest.raises(ValueError, match=words):
        Problem(**{**base, **fields})


def test_a_decoder_that_does_not_declare_latent_is_unsupported_naming_it() -> None:
    reason = load_registry().get("chunked").supports(latent(v_head_dim=0))
    assert reason is not None and "latent" in reason
