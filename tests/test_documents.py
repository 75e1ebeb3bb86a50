"""Packed variable-length batches (``documents``): lengths, the pattern against xformers' block-
diagonal masks and against the documents computed one by one, the work counted, the
implementations that take them, and a planted leak across a boundary."""

from __future__ import annotations

import itertools

import pytest
import torch

from attnbench import Implementation, Problem
from attnbench.case.documents import document_cuts, document_lengths
from attnbench.case.reference import softmax_attention
from attnbench.implementations.naive import naive_attention
from attnbench.measure.verify import check
from attnbench.plugins.registry import load_registry

Tensor = torch.Tensor


@pytest.mark.parametrize("spec", ["uniform:8", "longtail:8", "bimodal:8", "longtail:1", "uniform:5"])
@pytest.mark.parametrize("n", [8, 1000, 16384])
def test_lengths_are_seeded_positive_and_fill_the_sequence(spec: str, n: int) -> None:
    lengths = document_lengths(spec, n, 0)
    assert len(lengths) == int(spec.split(":")[1]) and sum(lengths) == n and min(lengths) >= 1
    assert lengths == document_lengths(spec, n, 0)
    if n > 100 and len(lengths) > 1:
        assert lengths != document_lengths(spec, n, 1)


def test_the_distributions_have_their_shapes() -> None:
    long = [
        max(document_lengths("longtail:8", 16384, s)) / min(document_lengths("longtail:8", 16384, s)) for s in range(8)
    ]
    assert min(long) > 10  # a few long documents and many short ones
    bimodal = document_lengths("bimodal:8", 16384, 0)
    assert sorted(set(bimodal)) == [min(bimodal), max(bimodal)] and max(bimodal) / min(bimodal) > 7


@pytest.mark.parametrize("causal", [False, True])
def test_the_mask_is_xformers_block_diagonal_mask(causal: bool) -> None:
    bias = pytest.importorskip("xformers.ops.fmha.attn_bias")
    lengths = document_lengths("longtail:6", 300, 2)
    problem = Problem(heads=1, seq_len=300, causal=causal, documents="longtail:6", seed=2)
    kind = bias.BlockDiagonalCausalMask if causal else bias.BlockDiagonalMask
    theirs = kind.from_seqlens(lengths).materialize((300, 300), dtype=torch.float32) == 0  # 0 kept, -inf not
    assert torch.equal(problem.pattern.mask(300, 300), theirs)


@pytest.mark.parametrize("fields", [dict(causal=True), dict(causal=False), dict(causal=True, window=40)])
def test_the_reference_on_a_packed_batch_is_each_document_alone(fields: dict) -> None:
    """FlashAttention's varlen contract: the packed output is each document's own attention."""
    problem = Problem(batch=2, heads=4, kv_heads=2, seq_len=512, head_dim=16, documents="bimodal:6", **fields)
    q, k, v = problem.make_inputs()
    packed = softmax_attention(q, k, v, problem)
    bounds = [0, *problem.pattern.documents, 512]
    for a, b in itertools.pairwise(bounds):
        alone = Problem(batch=2, heads=4, kv_heads=2, seq_len=b - a, head_dim=16, **fields)
        want = softmax_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], alone)
        assert (packed[:, :, a:b] - want).abs().max() < 1e-12


def test_the_work_counted_is_the_documents_pairs() -> None:
    problem = Problem(seq_len=16384, causal=True, documents="longtail:8")
    lengths = document_lengths("longtail:8", 16384, 0)
    assert problem.pattern.pairs(16384, 16384) == sum(n * (n + 1) // 2 for n in lengths)
    full = Problem(seq_len=16384, causal=True)
    assert problem.pattern.pairs(16384, 16384) < 0.3 * full.pattern.pairs(16384, 16384)


@pytest.mark.parametrize(
    "fields,words",
    [
        (dict(documents="zipf:4"), "documents"),
        (dict(documents="uniform:0"), "documents"),
        (dict(documents="uniform:4", kv_len=1024), "kv_len"),
        (dict(documents="uniform:4", mode="decode", seq_len=1, kv_len=64), "decode"),
        (dict(documents="uniform:600"), "fit"),
    ],
)
def test_invalid_packings_are_refused_naming_the_key(fields: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Problem(**{"seq_len": 512, **fields})


class LeakyDocuments(Implementation):
    """naive with the last key of every document visible to the next document's queries."""

    exact = True
    dtypes = ("float32", "bfloat16", "float16")
    features = frozenset({"causal", "gqa", "backward", "documents"})

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        mask = problem.pattern.mask(problem.seq_len, problem.kv_len)  # [N, N]
        cuts = problem.pattern.documents
        for a, b in zip(cuts, [*cuts[1:], problem.seq_len], strict=True):
            mask[a:b, a - 1] = True  # one token leaks across the boundary
        return naive_attention(q, k, v, problem.scale, mask)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_token_leaking_across_a_boundary_is_caught(dtype: str) -> None:
    problem = Problem(heads=8, kv_heads=2, seq_len=2048, head_dim=64, causal=True, dtype=dtype, documents="longtail:8")
    assert document_cuts("longtail:8", 2048, 0)  # there are boundaries to leak across
    assert check(load_registry().get("naive"), problem, max_rows=64).ok
    assert not check(LeakyDocuments(), problem, max_rows=64).ok


@pytest.mark.parametrize("name", ["naive", "sdpa", "sdpa_math", "chunked"])
def test_implementations_that_declare_documents_compute_them(name: str) -> None:
    impl = load_registry().get(name)
    for causal in (False, True):
        for mode in ("forward", "forward_backward"):
            problem = Problem(heads=4, kv_heads=2, seq_len=1024, documents="longtail:6", causal=causal, mode=mode,
                              dtype="bfloat16")  # fmt: skip
            assert impl.supports(problem) is None
            result = check(impl, problem, max_rows=128)
            assert result.ok, (causal, mode, result.figures())


def test_implementations_without_documents_say_so() -> None:
    reason = load_registry().get("sliding_window").supports(Problem(window=64, causal=True, documents="uniform:4"))
    assert reason is not None and "documents" in reason
