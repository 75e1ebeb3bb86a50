"""Decoding with a real KV cache: the cache itself, the reference that honours each sequence's
valid tokens, the native decoders and the dense-cache adapter, and the records a decode run
writes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import attnbench

from attnbench import Implementation, Problem
from attnbench.case.kvcache import KVCache, make_cache, parse_cache, parse_lengths, valid_lengths
from attnbench.case.modes import DECODE
from attnbench.measure.records import read_records
from attnbench.measure.verify import check
from attnbench.plugins.registry import load_registry
from attnbench.sweep.suite import SuiteError, parse_suite

Tensor = torch.Tensor
NATIVE = ["naive", "sdpa", "sdpa_math", "split_kv"]


def decode(**fields: Any) -> Problem:
    base = {"batch": 3, "heads": 4, "kv_heads": 2, "seq_len": 1, "kv_len": 600, "head_dim": 16, "causal": True}
    return Problem(**{**base, **fields, "mode": "decode"})


def judged(impl: Implementation, problem: Problem) -> Any:
    """The worker's check: a first call on the inputs scrambled, the judged call on them restored."""
    return check(impl, problem, max_rows=problem.seq_len)


# -- the cache ----------------------------------------------------------------------------------------


def test_cache_fields_parse_and_reject() -> None:
    assert parse_cache("contiguous") == 0 and parse_cache("paged:16") == 16
    assert parse_lengths("uniform") is None and parse_lengths("ragged") == 0.25 and parse_lengths("ragged:0.5") == 0.5
    for bad in ("paged:0", "paged:x", "flat"):
        with pytest.raises(ValueError, match="cache"):
            parse_cache(bad)
    for bad in ("ragged:0", "ragged:2", "some"):
        with pytest.raises(ValueError, match="kv_lengths"):
            parse_lengths(bad)


def test_ragged_lengths_are_seeded_and_bounded() -> None:
    lengths = valid_lengths(64, 2, 1000, "ragged:0.5", seed=3)
    assert torch.equal(lengths, valid_lengths(64, 2, 1000, "ragged:0.5", seed=3))
    assert int(lengths[0]) == 1000 and int(lengths.min()) >= 500 and int(lengths.max()) == 1000
    assert len(set(lengths.tolist())) > 10
    assert torch.equal(valid_lengths(4, 1, 1000, "uniform", 0), torch.full((4,), 1000))


@pytest.mark.parametrize("page", [0, 16])
def test_append_and_gather_give_each_sequence_its_own_tokens(page: int) -> None:
    args: dict[str, Any] = {"lengths": "ragged", "seed": 1, "dtype": torch.float32, "device": "cpu"}
    cache = make_cache(4, 2, 8, 100, 3, page=page, **args)
    contiguous = make_cache(4, 2, 8, 100, 3, page=0, **args)
    k_new, v_new = torch.randn(4, 2, 3, 8), torch.randn(4, 2, 3, 8)
    cache.append(k_new, v_new)
    for b in range(4):
        k_b, v_b = cache.gather(b)  # [1, Hkv, L_b, D]
        n = int(cache.attended[b])
        assert k_b.shape == (1, 2, n, 8)
        assert torch.equal(k_b[0, :, -3:], k_new[b]) and torch.equal(v_b[0, :, -3:], v_new[b])
        assert torch.equal(k_b[0, :, :-3], contiguous.k[b, :, : n - 3])  # the same valid tokens, paged or not
        assert bool((k_b.abs() < 100).all())  # no stale slot among them
    if page:
        assert cache.block_table is not None and not torch.equal(cache.block_table.flatten(), torch.arange(28))


# -- the reference honours the valid lengths ------------------------------------------------------------


class ReadsTheWholeCache(Implementation):
    """Planted bug: a native decoder that ignores the valid lengths and attends to the capacity."""

    devices = ("cpu",)
    features = frozenset({"causal", "gqa", "cross", "decode"})

    def prepare_decode(self, problem: Problem, cache: KVCache) -> Any:
        def step(q: Tensor, k_new: Tensor, v_new: Tensor) -> Tensor:
            cache.append(k_new, v_new)
            return torch.nn.functional.scaled_dot_product_attention(q, cache.k, cache.v, enable_gqa=True)

        return step


@pytest.mark.parametrize("lengths", ["ragged", "uniform"])
def test_a_decoder_that_reads_past_the_valid_tokens_is_inaccurate(lengths: str) -> None:
    result = judged(ReadsTheWholeCache(), decode(kv_lengths=lengths, seq_len=1 if lengths == "ragged" else 2))
    assert not result.ok


@pytest.mark.parametrize("name", NATIVE)
@pytest.mark.parametrize("cache", ["contiguous", "paged:16"])
@pytest.mark.parametrize("lengths", ["uniform", "ragged"])
@pytest.mark.parametrize(("seq_len", "window"), [(1, 0), (3, 0), (2, 40)])
def test_native_decoders_are_exact(name: str, cache: str, lengths: str, seq_len: int, window: int) -> None:
    impl = load_registry().get(name)
    assert "decode" in impl.features
    problem = decode(cache=cache, kv_lengths=lengths, seq_len=seq_len, window=window)
    result = judged(impl, problem)
    assert result.ok, result.failures()


@pytest.mark.parametrize(
    ("min_run", "kinds"),
    [(16, {"in place"}), (32, {"in place", "gathered"}), (10**9, {"gathered"})],
    ids=["every-page-in-place", "runs-in-place-single-pages-gathered", "every-page-gathered"],
)
@pytest.mark.parametrize(("seq_len", "window"), [(1, 0), (3, 300)])
def test_split_kv_reads_page_runs_where_they_lie_and_gathers_the_rest(
    min_run: int, kinds: set[str], seq_len: int, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paged cache is read in storage order, its masks from each slot's position: the window and
    the causal order among the new tokens must still hide exactly the right keys, with runs of
    pages read in place, single pages gathered, and both in one sequence."""
    impl = load_registry().get("split_kv")
    module = __import__(type(impl).__module__, fromlist=["MIN_RUN"])
    monkeypatch.setattr(module, "MIN_RUN", min_run)
    problem = decode(cache="paged:16", kv_lengths="ragged", seq_len=seq_len, window=window, kv_len=1000)
    cache = DECODE.make_inputs(problem).cache
    lo, hi = cache.ranges(problem.pattern)  # [B, S]
    rows = [module.rows_of(problem, cache, b) for b in range(problem.batch)]
    plans = [module.SequencePlan(cache, b, lo[b], hi[b], module.CHUNK, rows[b]) for b in range(problem.batch)]
    seen = {"gathered" if seg.index is not None else "in place" for plan in plans for seg in plan.segments}
    assert seen == kinds
    result = judged(impl, problem)
    assert result.ok, result.failures()


@pytest.mark.parametrize(
    "fields", [{"cache": "paged:16", "kv_lengths": "ragged", "seq_len": 2, "window": 40}, {"seq_len": 1}]
)
@pytest.mark.slow
def test_flex_decodes_from_the_cache_itself(fields: dict[str, Any]) -> None:
    """FlexAttention compiles one kernel per shape (seconds each), so two cases here."""
    result = judged(load_registry().get("flex"), decode(**fields))
    assert result.ok, result.failures()


@pytest.mark.parametrize("name", ["split_kv", "sdpa"])
def test_decoders_at_a_32k_grouped_cache(name: str) -> None:
    problem = Problem(
        batch=2, heads=32, kv_heads=8, seq_len=1, kv_len=32768, head_dim=128, mode="decode", kv_lengths="ragged",
        cache="paged:16", dtype="bfloat16",
    )  # fmt: skip
    result = judged(load_registry().get(name), problem)
    assert result.ok, result.failures()


@pytest.mark.parametrize("name", ["chunked", "linear"])
def test_implementations_without_a_decoder_run_through_the_dense_cache_adapter(name: str) -> None:
    impl = load_registry().get(name)
    assert "decode" not in impl.features
    result = judged(impl, decode(kv_lengths="ragged", cache="paged:16", seq_len=2))
    assert result.ok, result.failures()


def test_split_kv_is_a_decoder_only() -> None:
    impl = load_registry().get("split_kv")
    assert impl.supports(Problem(seq_len=64)) is not None
    assert impl.supports(decode()) is None


def test_xformers_decode_biases_keep_the_same_pairs_as_the_cache() -> None:
    """xFormers' padded-keys biases (materialised on the CPU) against the cache's own mask."""
    pytest.importorskip("xformers")
    from attnbench.implementations.xformers_impl import decode_bias

    for causal, window in ((True, 0), (False, 0), (True, 5)):
        problem = decode(causal=causal, window=window, seq_len=3, kv_len=20, kv_lengths="ragged")
        cache = make_cache(3, 2, 16, 20, 3, page=0, lengths="ragged", seed=0, dtype=torch.float32, device="cpu")
        dense = decode_bias(problem, cache).materialize((9, 60))  # [B·S, B·capacity]
        ours = cache.mask(problem.pattern, 20)  # [B, 1, S, capacity]
        expected = torch.ones(9, 60, dtype=torch.bool)
        for b in range(3):
            expected[b * 3 : (b + 1) * 3, b * 20 : (b + 1) * 20] = ~ours[b, 0]
        assert torch.equal(torch.isinf(dense), expected), (causal, window)


# -- work, validation, records ----------------------------------------------------------------------------


def test_decode_work_counts_each_sequences_own_tokens() -> None:
    problem = decode(kv_lengths="ragged", batch=5)
    lengths = valid_lengths(5, 1, 600, "ragged", 0)
    kind = problem.kind
    assert kind.pairs(problem) == int(lengths.sum())
    elem = 4
    assert kind.io_bytes(problem) == (2 * 2 * 16 * int(lengths.sum()) + 2 * 5 * 2 * 16 + 2 * 5 * 4 * 16) * elem


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "decode", "layout": "bigbird:block=16"}, "block layouts"),
        ({"mode": "forward", "cache": "paged:16"}, "apply to mode .decode. only"),
        ({"mode": "decode", "seq_len": 700}, "exceed the cache"),
    ],
)
def test_decode_fields_are_validated(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Problem(**{"seq_len": 1, "kv_len": 600, **fields})
    grid = "\n".join(f"{k} = [{v!r}]".replace("'", '"') for k, v in fields.items())
    text = f'[suite]\nimplementations = ["sdpa"]\n[grid]\nseq_len = [{fields.get("seq_len", 1)}]\nkv_len = [600]\n'
    text += grid.replace(f"seq_len = [{fields.get('seq_len')}]", "")
    with pytest.raises(SuiteError, match=message):
        parse_suite(text, "bad.toml")


TINY_DECODE = """
[suite]
implementations = ["sdpa", "split_kv", "naive", "chunked"]
[grid]
mode = ["decode"]
batch = [2]
heads = [8]
kv_heads = [2]
seq_len = [1]
kv_len = [4096, 16384]
head_dim = [64]
dtype = ["float32"]
causal = [true]
cache = ["contiguous", "paged:16"]
kv_lengths = ["ragged"]
[budget]
min_time_s = 0.02
max_time_s = 0.1
"""


@pytest.mark.slow
def test_a_decode_run_records_bandwidth_and_tokens(tmp_path: Path) -> None:
    suite = tmp_path / "tiny_decode.toml"
    suite.write_text(TINY_DECODE)
    out = tmp_path / "run"
    proc = attnbench("run", str(suite), "--out", str(out), "--no-report")
    assert proc.returncode == 0, proc.stderr
    records = read_records(out / "results.jsonl")
    assert len(records) == 4 * 4 and all(r["status"] == "ok" for r in records), [r["reason"] for r in records]
    for r in records:
        assert r["mode"] == "decode" and r["machine_probe"].startswith("triad")
        assert 0 < r["bandwidth_fraction"] <= 1.0, (r["impl"], r["gbps"], r["peak_gbps"])
        assert r["tokens_per_s"] == pytest.approx(2 / (r["time_ms"] / 1e3))
        assert r["checks"] == ["output"]
        assert math.isclose(r["gbps"], r["bytes"] / (r["time_ms"] / 1e3) / 1e9)
        assert (r["adapter"] != "") == (r["impl"] == "chunked")
    report = attnbench("report", str(out))
    assert report.returncode == 0, report.stderr
