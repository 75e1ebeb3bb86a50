"""The library-backed implementations — SDPA and its backends, FlexAttention, xFormers — pass the
correctness contract (``attnbench.measure.verify.check``) on every pattern they declare.

SDPA runs wherever it is available; FlexAttention compiles a kernel per shape (seconds on the
CPU), so its cases are few and share one instance (which caches compiled calls); xFormers and
the CUDA-only SDPA backends run on CUDA only (``@pytest.mark.cuda``).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbench import Problem
from attnbench.measure.verify import check
from attnbench.plugins.contract import Implementation
from attnbench.plugins.registry import load_registry

Tensor = torch.Tensor

SDPA_VARIANTS = ("sdpa", "sdpa_math", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn")
BIGBIRD = "bigbird:block=16,local=1,global=1,random=2,seed=0"
HAS_CUDA = torch.cuda.is_available()


def _impl(name: str) -> Implementation:
    return load_registry().get(name)


def _available_sdpa() -> list[str]:
    return [name for name in SDPA_VARIANTS if _impl(name).available().ok]


def _assert_passes(impl: Implementation, problem: Problem) -> None:
    reason = impl.supports(problem)
    assert reason is None, f"{impl.name} declines {problem}: {reason}"
    result = check(impl, problem)
    assert result.ok, f"{impl.name} on {problem}: {result.failures()}"


# -- SDPA ---------------------------------------------------------------------------------------

SDPA_CASES = {
    "full": Problem(batch=2, heads=4, seq_len=100, head_dim=64),
    "causal": Problem(batch=2, heads=4, seq_len=100, head_dim=64, causal=True),
    "causal-d32": Problem(heads=2, seq_len=77, head_dim=32, causal=True),
    "causal-d128": Problem(heads=2, seq_len=130, head_dim=128, causal=True),
    "cross-longer-keys": Problem(heads=2, seq_len=50, kv_len=90, head_dim=64),
    "cross-causal-longer-keys": Problem(heads=2, seq_len=50, kv_len=90, head_dim=64, causal=True),
    "cross-causal-longer-queries": Problem(heads=2, seq_len=90, kv_len=50, head_dim=64, causal=True),
    "gqa": Problem(batch=2, heads=8, kv_heads=2, seq_len=70, head_dim=64, causal=True),
    "one-query": Problem(heads=4, seq_len=1, kv_len=129, head_dim=64, causal=True),
    "bf16-causal": Problem(heads=4, seq_len=100, head_dim=64, causal=True, dtype="bfloat16"),
    "bf16-gqa-cross": Problem(heads=4, kv_heads=1, seq_len=60, kv_len=100, head_dim=128, dtype="bfloat16"),
    "f64-window-gqa": Problem(heads=4, kv_heads=2, seq_len=70, head_dim=64, window=9, dtype="float64"),
    "window": Problem(heads=2, seq_len=150, head_dim=64, window=20),
    "window-causal-cross": Problem(heads=2, seq_len=90, kv_len=150, head_dim=32, window=33, causal=True),
    "bigbird": Problem(heads=2, seq_len=200, head_dim=64, layout=BIGBIRD),
    "bigbird-causal-bf16": Problem(heads=2, seq_len=150, head_dim=64, layout=BIGBIRD, causal=True, dtype="bfloat16"),
    "grad-causal": Problem(heads=2, seq_len=40, head_dim=32, causal=True, mode="forward_backward"),
    "grad-gqa-cross": Problem(heads=4, kv_heads=2, seq_len=30, kv_len=50, head_dim=32, causal=True, mode="backward"),
    "grad-window": Problem(heads=2, seq_len=60, head_dim=32, window=9, mode="forward_backward"),
    "grad-bigbird-bf16": Problem(heads=2, seq_len=64, head_dim=32, layout=BIGBIRD, mode="backward", dtype="bfloat16"),
}


@pytest.mark.parametrize("name", _available_sdpa())
@pytest.mark.parametrize("case", list(SDPA_CASES))
def test_sdpa_variant_passes_the_contract(name: str, case: str) -> None:
    _assert_passes(_impl(name), SDPA_CASES[case])


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(_available_sdpa()),
    batch=st.integers(1, 2),
    kv_heads=st.integers(1, 2),
    group=st.integers(1, 3),
    seq_len=st.integers(1, 70),
    kv_len=st.integers(1, 70),
    head_dim=st.sampled_from([8, 16, 32, 64]),
    causal=st.booleans(),
    window=st.integers(0, 12),
    dtype=st.sampled_from(["float32", "bfloat16"]),
)
def test_sdpa_property_any_shape(
    name: str,
    batch: int,
    kv_heads: int,
    group: int,
    seq_len: int,
    kv_len: int,
    head_dim: int,
    causal: bool,
    window: int,
    dtype: str,
) -> None:
    problem = Problem(
        batch=batch,
        heads=kv_heads * group,
        kv_heads=kv_heads,
        seq_len=seq_len,
        kv_len=kv_len,
        head_dim=head_dim,
        causal=causal,
        window=window,
        dtype=dtype,
    )
    _assert_passes(_impl(name), problem)


def test_sdpa_output_empty_rows_are_zero() -> None:
    """Causal with more queries than keys: the first queries see no key and output zeros."""
    problem = Problem(heads=2, seq_len=12, kv_len=5, head_dim=16, causal=True)
    q, k, v = problem.make_inputs()
    for name in _available_sdpa():
        out = _impl(name).prepare(problem)(q, k, v)  # [1, 2, 12, 16]
        assert torch.equal(out[:, :, :7], torch.zeros_like(out[:, :, :7])), name


def test_sdpa_unavailable_backends_say_why() -> None:
    for name in SDPA_VARIANTS:
        avail = _impl(name).available()
        assert avail.ok or avail.reason, name
    if not HAS_CUDA:
        for name in ("sdpa_efficient", "sdpa_cudnn"):
            avail = _impl(name).available()
            assert not avail.ok
            assert "cuda" in avail.reason and "No viable backend" in avail.reason, avail.reason
        assert _impl("sdpa_efficient").supports(Problem()) == "runs on cuda, not cpu"


def test_sdpa_declarations() -> None:
    assert _impl("sdpa_math").growth.memory == 2.0
    assert _impl("sdpa_flash").growth.memory == 1.0
    for name in SDPA_VARIANTS:
        impl = _impl(name)
        assert impl.exact and {"causal", "window", "layout", "gqa", "cross", "backward"} <= impl.features


# -- FlexAttention --------------------------------------------------------------------------------

FLEX_CASES = {
    "causal-cross-gqa-batch": Problem(batch=2, heads=4, kv_heads=2, seq_len=200, kv_len=60, head_dim=32, causal=True),
    "bigbird": Problem(heads=2, seq_len=200, head_dim=64, layout=BIGBIRD),
    "window-bf16-d128": Problem(
        heads=2, seq_len=130, kv_len=90, head_dim=128, window=17, causal=True, dtype="bfloat16"
    ),
    "one-query-fp16": Problem(heads=2, seq_len=1, kv_len=77, head_dim=64, causal=True, dtype="float16"),
}


@pytest.fixture(scope="module")
def flex() -> Implementation:
    impl = _impl("flex")
    if not impl.available().ok:
        pytest.skip(impl.available().reason)
    return impl


@pytest.mark.parametrize("case", list(FLEX_CASES))
def test_flex_passes_the_contract(flex: Implementation, case: str) -> None:
    _assert_passes(flex, FLEX_CASES[case])


def test_flex_records_setup_and_reuses_compiled_calls(flex: Implementation) -> None:
    problem = FLEX_CASES["one-query-fp16"]
    first = flex.prepare(problem)  # compiled by the contract test already, or now
    again = flex.prepare(problem)
    assert again.setup_s == flex.last_setup_s  # type: ignore[attr-defined]
    assert again.setup_s < 0.1 and again.compiled is first.compiled  # type: ignore[attr-defined]


def test_flex_mask_mod_is_the_pattern() -> None:
    """The mask function, evaluated densely (no compilation), equals ``Pattern.mask`` exactly."""
    from torch.nn.attention.flex_attention import create_mask

    from attnbench.implementations.flex import mask_mod_for

    for causal, window, layout, nq, nk in [
        (True, 0, "dense", 70, 70),
        (True, 0, "dense", 90, 40),
        (True, 0, "dense", 40, 90),
        (False, 7, "dense", 50, 80),
        (True, 7, "dense", 80, 50),
        (False, 0, BIGBIRD, 150, 150),
        (True, 5, BIGBIRD, 100, 170),
        (False, 0, "longformer:block=8", 33, 65),
    ]:
        pattern = Problem(seq_len=nq, kv_len=nk, causal=causal, window=window, layout=layout).pattern
        dense = create_mask(mask_mod_for(pattern, nq, nk, "cpu"), None, None, nq, nk, device="cpu")  # [1, 1, Nq, Nk]
        assert torch.equal(dense[0, 0], pattern.mask(nq, nk)), (causal, window, layout, nq, nk)


def test_flex_declines_backward_on_cpu(flex: Implementation) -> None:
    reason = flex.supports(Problem(seq_len=64, causal=True, mode="backward"))
    assert reason is not None and "backward" in reason


# -- xFormers -------------------------------------------------------------------------------------


def test_xformers_unavailable_without_cuda() -> None:
    avail = _impl("xformers").available()
    if HAS_CUDA:
        pytest.skip("a CUDA device is present")
    assert not avail.ok
    if importlib.util.find_spec("xformers") is None:  # installed without the [xformers] extra
        assert "not importable" in avail.reason, avail.reason
    else:
        assert "CUDA" in avail.reason, avail.reason


def test_xformers_declines_layouts_and_gqa_backward() -> None:
    xf = _impl("xformers")
    assert "layout" in (xf.supports(Problem(device="cuda", layout=BIGBIRD)) or "")
    assert "forward pass only" in (xf.supports(Problem(device="cuda", heads=4, kv_heads=2, mode="backward")) or "")


def _xformers_importable() -> bool:
    from attnbench.implementations import xformers_impl

    try:
        xformers_impl._import_xformers()
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _xformers_importable(), reason="xformers is not importable")
@pytest.mark.parametrize(
    "problem",
    [
        Problem(heads=4, kv_heads=2, seq_len=40, kv_len=40, head_dim=16, causal=True),
        Problem(heads=6, kv_heads=2, seq_len=30, kv_len=55, head_dim=16, causal=True),
        Problem(heads=2, seq_len=45, kv_len=30, head_dim=16, window=6, causal=True),
        Problem(heads=4, kv_heads=1, seq_len=40, kv_len=60, head_dim=16, window=5),
        Problem(heads=2, seq_len=60, kv_len=40, head_dim=16, window=8),
    ],
    ids=["causal-gqa", "causal-cross-gqa", "window-causal", "window-gqa-cross", "window-queries-longer"],
)
def test_xformers_biases_and_layout_on_cpu(problem: Problem) -> None:
    """Without running xFormers' kernels: its biases, materialized, equal the pattern's mask, and
    the ``[B, N, Hkv, G, D]`` rearrangement, computed with that bias in plain PyTorch, gives the
    reference output (rows that see no key: softmax of all ``-inf`` is NaN, zeroed here)."""
    from attnbench.case.reference import softmax_attention
    from attnbench.implementations.xformers_impl import _from_xformers, _to_xformers, attention_bias

    nq, nk = problem.seq_len, problem.kv_len
    allowed = problem.pattern.mask(nq, nk)  # [Nq, Nk]
    bias = attention_bias(problem).materialize((nq, nk), dtype=torch.float64)  # [Nq, Nk], 0 or -inf
    assert torch.equal(bias == 0, allowed)

    q, k, v = (t.double() for t in problem.make_inputs())
    xq, xk, xv = _to_xformers(q, k, v, problem.heads // problem.kv_heads)  # [B, N, H, D] or [B, N, Hkv, G, D]
    xq, xk, xv = (t if t.dim() == 5 else t[:, :, :, None] for t in (xq, xk, xv))  # [B, N, Hkv, G, D]
    scores = torch.einsum("bqgjd,bkgjd->bgjqk", xq, xk) * problem.scale + bias  # [B, Hkv, G, Nq, Nk]
    out = torch.einsum("bgjqk,bkgjd->bqgjd", scores.softmax(-1).nan_to_num(0.0), xv)  # [B, Nq, Hkv, G, D]
    assert torch.allclose(_from_xformers(out, q.shape), softmax_attention(q, k, v, problem))


class _PlainXFormers:
    """xFormers' ``memory_efficient_attention`` written out in float64 PyTorch, with its real
    bias classes: what the implementation hands the kernel, computed without CUDA."""

    def __init__(self) -> None:
        from attnbench.implementations import xformers_impl

        self.fmha = xformers_impl._import_xformers()[0].fmha

    def memory_efficient_attention(self, q: Tensor, k: Tensor, v: Tensor, attn_bias: Any, scale: float) -> Tensor:
        five = q.dim() == 5
        xq, xk, xv = (t.double() if five else t.double()[:, :, :, None] for t in (q, k, v))  # [B, M, Hkv, G, D]
        nq, nk = xq.shape[1], xk.shape[1]
        if isinstance(attn_bias, Tensor):  # [B, H, Nq, Nk]
            assert attn_bias.stride(-2) % 8 == 0, "xFormers asks a tensor bias for rows aligned to 8 elements"
            bias = attn_bias.double().reshape(attn_bias.shape[0], xq.shape[2], xq.shape[3], nq, nk)
        else:
            bias = attn_bias.materialize((nq, nk), dtype=torch.float64)  # [Nq, Nk]
        scores = torch.einsum("bqgjd,bkgjd->bgjqk", xq, xk) * scale + bias  # [B, Hkv, G, Nq, Nk]
        out = torch.einsum("bgjqk,bkgjd->bqgjd", scores.softmax(-1).nan_to_num(0.0), xv)  # [B, Nq, Hkv, G, D]
        return (out if five else out[:, :, :, 0]).to(q.dtype)


@pytest.mark.skipif(not _xformers_importable(), reason="xformers is not importable")
@pytest.mark.parametrize(
    "problem",
    [
        Problem(batch=2, heads=4, seq_len=300, head_dim=16, causal=True, documents="longtail:5", seed=3),
        Problem(batch=2, heads=4, kv_heads=2, seq_len=300, head_dim=16, documents="bimodal:4"),
        Problem(heads=2, seq_len=300, head_dim=16, causal=True, window=24, documents="uniform:3"),
        Problem(batch=2, heads=4, seq_len=61, kv_len=77, head_dim=16, causal=True, bias="alibi"),
        Problem(heads=8, seq_len=90, head_dim=16, window=10, bias="alibi"),
        Problem(batch=2, heads=4, seq_len=300, head_dim=16, causal=True, documents="longtail:5", bias="alibi"),
    ],
    ids=["documents-causal", "documents-gqa", "documents-window", "alibi-causal-cross", "alibi-window", "alibi-docs"],
)
def test_xformers_documents_and_alibi_on_cpu(monkeypatch: pytest.MonkeyPatch, problem: Problem) -> None:
    """The packed batch (``[1, B·N, H, D]`` against the documents' block-diagonal bias, repeated
    for each batch element) and ALiBi's aligned tensor bias, run through the implementation's own
    ``prepare`` with the kernel written out in PyTorch: the reference output."""
    from attnbench.case.reference import softmax_attention
    from attnbench.implementations import xformers_impl

    monkeypatch.setattr(xformers_impl, "_xformers_ops", _PlainXFormers)
    impl = _impl("xformers")
    assert impl.supports(problem.with_(device="cuda")) is None
    q, k, v = (t.double() for t in problem.with_(dtype="float64").make_inputs())
    out = impl.prepare(problem.with_(dtype="float64"))(q, k, v)  # [B, H, Nq, D]
    assert torch.allclose(out, softmax_attention(q, k, v, problem), atol=1e-12)


def test_xformers_declines_the_variants_it_has_no_bias_for() -> None:
    xf = _impl("xformers")
    assert "alibi" in (xf.supports(Problem(device="cuda", heads=4, kv_heads=2, bias="alibi")) or "")
    assert "causal" in (xf.supports(Problem(device="cuda", window=8, documents="uniform:2")) or "")
    assert "softcap" in (xf.supports(Problem(device="cuda", softcap=30.0)) or "")


# -- CUDA -----------------------------------------------------------------------------------------

CUDA_CASES = [
    Problem(heads=4, seq_len=256, head_dim=64, dtype="float16", device="cuda"),
    Problem(batch=2, heads=4, seq_len=200, head_dim=64, dtype="bfloat16", device="cuda", causal=True),
    Problem(heads=8, kv_heads=2, seq_len=100, kv_len=300, head_dim=128, dtype="float16", device="cuda", causal=True),
    Problem(heads=4, seq_len=300, kv_len=100, head_dim=64, dtype="float16", device="cuda", causal=True),
    Problem(heads=4, seq_len=300, head_dim=64, dtype="float16", device="cuda", window=64, causal=True),
    Problem(heads=4, seq_len=200, kv_len=250, head_dim=64, dtype="float32", device="cuda", window=32),
    Problem(heads=4, seq_len=256, head_dim=64, dtype="float16", device="cuda", layout=BIGBIRD),
    Problem(heads=4, seq_len=128, head_dim=64, dtype="bfloat16", device="cuda", causal=True, mode="forward_backward"),
    Problem(
        batch=2, heads=4, seq_len=512, head_dim=64, dtype="bfloat16", device="cuda", causal=True, documents="longtail:6"
    ),
    Problem(heads=8, seq_len=300, kv_len=400, head_dim=64, dtype="float16", device="cuda", causal=True, bias="alibi"),
]


@pytest.mark.parametrize("name", ["xformers", *SDPA_VARIANTS, "flex"])
@pytest.mark.parametrize("problem", CUDA_CASES, ids=lambda p: f"{p.dtype}-{p.seq_len}x{p.kv_len}-{p.layout[:8]}")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_implementations_pass_the_contract(name: str, problem: Problem) -> None:
    impl = _impl(name)
    if not impl.available().ok:
        pytest.skip(impl.available().reason)
    reason = impl.supports(problem)
    if reason is not None:
        pytest.skip(reason)
    result = check(impl, problem)
    assert result.ok, f"{name} on {problem}: {result.failures()}"
