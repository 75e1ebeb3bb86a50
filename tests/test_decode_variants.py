"""Decoding with the variants models compute: a soft-cap, ALiBi and learned sinks against a real
KV cache (contiguous and paged, uniform and ragged, one new token or several under a window). The
reference judges each sequence on its own keys with its own positions; each planted bug (a dropped
sink, ALiBi slopes in reversed head order, ALiBi positions taken from the capacity rather than
each sequence's own length, a cap ignored) is caught."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest
import torch

from attnbench import Problem
from attnbench.case.modes import DECODE
from attnbench.implementations import _chunk_partials
from attnbench.measure.verify import check
from attnbench.plugins.registry import load_registry

CASES = [  # (cache, kv_lengths, seq_len, window)
    ("contiguous", "uniform", 1, 0),
    ("paged:16", "ragged", 1, 0),
    ("contiguous", "ragged", 3, 200),
    ("paged:16", "uniform", 2, 300),
]
VARIANTS = {"alibi": {"bias": "alibi"}, "sinks": {"sinks": "learned"}, "softcap": {"softcap": 30.0}}
TAKES = {"naive": ("alibi", "sinks", "softcap"), "sdpa": ("alibi",), "split_kv": ("alibi", "sinks")}


def decode(**fields: Any) -> Problem:
    base = {"batch": 3, "heads": 8, "kv_heads": 2, "seq_len": 1, "kv_len": 700, "head_dim": 16, "causal": True}
    return Problem(**{**base, **fields, "mode": "decode"})


def judged(name: str, problem: Problem) -> Any:
    impl = load_registry().get(name)
    assert impl.supports(problem) is None, impl.supports(problem)
    return check(impl, problem, max_rows=problem.seq_len)


@pytest.mark.parametrize(("cache", "lengths", "seq_len", "window"), CASES)
@pytest.mark.parametrize(("name", "variant"), [(n, v) for n, vs in TAKES.items() for v in vs])
def test_decoders_compute_each_variant_they_take(
    name: str, variant: str, cache: str, lengths: str, seq_len: int, window: int
) -> None:
    problem = decode(cache=cache, kv_lengths=lengths, seq_len=seq_len, window=window, **VARIANTS[variant])
    result = judged(name, problem)
    assert result.ok, result.failures()


@pytest.mark.parametrize(("dtype", "tokens"), [("bfloat16", 32768), ("float32", 4096)])
def test_split_kv_decodes_alibi_and_sinks_together_at_a_long_grouped_cache(dtype: str, tokens: int) -> None:
    problem = decode(
        batch=2, heads=32, kv_heads=8, kv_len=tokens, head_dim=128, cache="paged:16", kv_lengths="ragged",
        dtype=dtype, bias="alibi", sinks="learned",
    )  # fmt: skip
    result = judged("split_kv", problem)
    assert result.ok, result.failures()


def _split_kv_module() -> Any:
    return sys.modules[type(load_registry().get("split_kv")).__module__]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_dropped_sink_in_decode_is_caught(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    problem = decode(sinks="learned", kv_lengths="ragged", dtype=dtype)
    assert judged("split_kv", problem).ok
    monkeypatch.setattr(_split_kv_module(), "case_sinks", lambda p: None)
    assert not judged("split_kv", problem).ok


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_alibi_slopes_in_reversed_head_order_in_decode_are_caught(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    problem = decode(bias="alibi", kv_lengths="ragged", dtype=dtype)
    assert judged("split_kv", problem).ok
    module = _split_kv_module()
    true_slopes = module.alibi_slopes
    monkeypatch.setattr(module, "alibi_slopes", lambda heads: true_slopes(heads).flip(0))
    assert not judged("split_kv", problem).ok


def test_alibi_positions_from_the_capacity_instead_of_each_sequences_length_are_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each sequence's new tokens sit at the end of its own keys, and ALiBi's distances are measured
    from there. Measured from the wrong place (planted: every row's position halved), the bias is
    no longer the true one plus a per-row constant (which the softmax would ignore): caught."""
    problem = decode(bias="alibi", kv_lengths="ragged", batch=3)
    module = _split_kv_module()
    true_rows = module.rows_of

    def misplaced(p: Problem, cache: Any, b: int) -> Any:
        rows = true_rows(p, cache, b)
        return module.Rows(rows.groups, rows.positions / 2, rows.slopes)

    assert judged("split_kv", problem).ok
    monkeypatch.setattr(module, "rows_of", misplaced)
    assert not judged("split_kv", problem).ok


def test_a_decode_soft_cap_acts_on_the_scores_and_an_ignored_cap_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode inputs spread the queries to two thirds of the cap, as the forward's do, so the
    cap bends the scores: the naive decoder with its cap dropped is inaccurate."""
    problem = decode(softcap=30.0, kv_lengths="ragged")
    q = DECODE.make_inputs(problem).q
    assert 17.0 < float(q.float().std()) < 23.0  # 30 / 1.5 = 20
    assert float(DECODE.make_inputs(decode(kv_lengths="ragged")).q.float().std()) < 1.5
    assert judged("naive", problem).ok
    naive = sys.modules[type(load_registry().get("naive")).__module__]
    true_of = naive.ScoreChanges.of

    def uncapped(p: Problem, cache: Any = None) -> Any:
        changes = true_of(p, cache)
        return None if changes is None else naive.ScoreChanges(0.0, changes.bias, changes.sink)

    monkeypatch.setattr(naive.ScoreChanges, "of", staticmethod(uncapped))
    assert not judged("naive", problem).ok


@pytest.mark.parametrize(
    ("name", "fields", "why"),
    [
        ("split_kv", {"softcap": 30.0}, "softcap"),
        ("sdpa", {"sinks": "learned"}, "sinks"),
        ("flex", {"bias": "alibi"}, "takes no score_mod"),
    ],
)
def test_a_decoder_that_cannot_compute_a_variant_says_so(name: str, fields: dict[str, Any], why: str) -> None:
    reason = load_registry().get(name).supports(decode(**fields))
    assert reason is not None and why in reason


def test_first_token_sinks_against_a_cache_are_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"sinks 'first:4'.*KV cache"):
        decode(sinks="first:4", window=64)


# -- values of their own head dimension (multi-head latent attention) -------------------------------


@pytest.mark.parametrize(("cache", "lengths", "seq_len", "window"), CASES)
@pytest.mark.parametrize("name", ["naive", "sdpa", "split_kv", "flex"])
def test_decoders_read_values_of_their_own_head_dimension(
    name: str, cache: str, lengths: str, seq_len: int, window: int
) -> None:
    """Keys of 48 dimensions and values of 32 (and the reverse), against every cache layout:
    split_kv's fused kernel wants one head size, so its chunks then run as plain products."""
    for head_dim, v_head_dim in ((48, 32), (16, 40)):
        problem = decode(
            cache=cache, kv_lengths=lengths, seq_len=seq_len, window=window, head_dim=head_dim, v_head_dim=v_head_dim
        )
        result = judged(name, problem)
        assert result.ok, (head_dim, v_head_dim, result.failures())


def test_values_scaled_by_their_own_dimension_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder that takes the softmax scale from the values' dimension (1/√32 for 1/√48)."""
    problem = decode(head_dim=48, v_head_dim=32, kv_len=2048)
    assert judged("split_kv", problem).ok
    module = _split_kv_module()
    real = module.attend_chunks
    factor = (48 / 32) ** 0.5  # 1/√32 where 1/√48 is asked

    def planted(qg: Any, k: Any, v: Any, scale: float, bias: Any, upcast: bool, path: str) -> Any:
        return real(qg, k, v, scale * factor, bias, upcast, path)

    monkeypatch.setattr(module, "attend_chunks", planted)
    caught = judged("split_kv", problem)
    assert not caught.ok, caught.figures()


def test_a_decode_step_counts_its_values_bytes_at_their_own_width() -> None:
    problem = decode(batch=1, heads=16, kv_heads=1, kv_len=4096, head_dim=576, v_head_dim=512, dtype="bfloat16")
    keys_and_values = (576 + 512) * 4096 * 2  # bf16: every cached token's key and value, one KV head
    queries_and_output = 16 * (576 + 512) * 2
    new = (576 + 512) * 2  # the new token's key and value, written
    assert DECODE.io_bytes(problem) == keys_and_values + queries_and_output + new


PATH_CASES = {  # every mask the plans build: windows, several new tokens, gathered pages, variants
    "contiguous-uniform": {},
    "paged-ragged-3-window": {"cache": "paged:16", "kv_lengths": "ragged", "seq_len": 3, "window": 200},
    "contiguous-ragged-2-window": {"kv_lengths": "ragged", "seq_len": 2, "window": 40},
    "alibi-paged": {"cache": "paged:16", "kv_lengths": "ragged", "bias": "alibi"},
    "sinks-window": {"sinks": "learned", "window": 300, "seq_len": 2},
    "latent-paged": {"cache": "paged:16", "kv_lengths": "ragged", "latent": True, "head_dim": 24, "v_head_dim": 16},
    "v_head_dim": {"kv_lengths": "ragged", "head_dim": 24, "v_head_dim": 16},
}


@pytest.mark.parametrize("path", ["fused", "batched", "per_head"])
@pytest.mark.parametrize("case", list(PATH_CASES))
@pytest.mark.parametrize("min_run", [16, 10**9], ids=["pages-in-place", "pages-gathered"])
def test_split_kv_is_exact_on_each_of_its_paths(
    path: str, case: str, min_run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each way of computing a chunk (the fused kernel, batched products, products per head), which
    split_kv picks by timing on the machine at hand, is exact alone, with every page read in place
    or every page gathered (chunks a row sees nothing of)."""
    fields = PATH_CASES[case]
    if path == "fused" and fields.get("v_head_dim") and not fields.get("latent"):
        pytest.skip("the fused kernel takes one head size: a case with values of their own width never uses it")
    module = _split_kv_module()
    monkeypatch.setattr(module, "PATHS", (path,))
    monkeypatch.setattr(module, "MIN_RUN", min_run)
    result = judged("split_kv", decode(**fields))
    assert result.ok, result.failures()


def test_split_kv_keeps_the_path_its_trial_times_fastest() -> None:
    """The trial at preparation: warm-up, then rounds in alternation, the median kept."""
    module = _split_kv_module()
    calls: list[str] = []

    def run(path: str) -> None:
        calls.append(path)
        if path != "quick":
            time.sleep(0.02)

    assert module.fastest(["slow", "quick", "slower"], run) == "quick"
    assert calls == ["slow", "quick", "slower"] * (_chunk_partials.TRIAL_ROUNDS + 1)
    assert module.fastest(["only"], run) == "only" and calls[-1] == "slower"  # one candidate: not timed


@pytest.mark.parametrize("path", ["batched", "per_head"])
def test_a_row_that_sees_no_key_of_a_chunk_weighs_nothing_in_the_products(path: str) -> None:
    """Scores far below a row's largest are raised to ``EXP_FLOOR`` before ``exp`` (masked ones
    too), so a row masked from every key must still come out with a log-sum-exp of −inf, else it
    would weigh ``e⁻⁸⁰·L`` in the combination, which beats a chunk whose scores are all lower
    (ALiBi far from the query)."""
    module = _split_kv_module()
    qg = torch.randn(2, 3, 8)  # [Hkv, R, D]
    k, v = torch.randn(2, 4, 16, 8), torch.randn(2, 4, 16, 8)  # [Hkv, n, C, D]
    bias = torch.zeros(4, 1, 3, 16)  # [n, 1, R, C]
    bias[:, :, 1] = float("-inf")  # row 1 sees nothing
    _, lse = module.attend_chunks(qg, k, v, 0.35, bias, False, path)  # [Hkv, 1, R]
    assert torch.isneginf(lse[:, :, 1]).all()
    assert torch.isfinite(lse[:, :, [0, 2]]).all()


def test_without_bfloat16_matrix_units_split_kv_only_tries_the_fused_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the CPU multiplies bfloat16 in float32, the products would copy the whole stretch to
    float32 first: the fused kernel is the only candidate there (values of their own width, which
    the fused kernel cannot take, still get the products)."""
    module = _split_kv_module()
    tried: list[list[str]] = []

    def record(paths: list[str], run: Any) -> str:
        tried.append(list(paths))
        return paths[0]

    monkeypatch.setattr(module, "fastest", record)
    monkeypatch.setattr(module, "low_precision_matmul_is_fast", lambda: False)
    assert judged("split_kv", decode(dtype="bfloat16", kv_lengths="ragged")).ok
    assert tried and all(paths == ["fused"] for paths in tried)
    tried.clear()
    assert judged("split_kv", decode(dtype="bfloat16", head_dim=24, v_head_dim=16)).ok
    assert tried and all(paths == ["batched", "per_head"] for paths in tried)
    tried.clear()
    monkeypatch.setattr(module, "low_precision_matmul_is_fast", lambda: True)
    assert judged("split_kv", decode(dtype="bfloat16")).ok
    assert tried and all(paths == ["fused", "batched", "per_head"] for paths in tried)
