"""xFormers' ``memory_efficient_attention``, with xFormers' own attention biases for the patterns.

xFormers takes ``[B, N, H, D]`` (sequence before heads), so ``q, k, v`` are transposed in and
the output transposed back (views, no copies). The pattern is one of xFormers' structured
biases, never a dense tensor, so the kernel skips masked tiles
(https://facebookresearch.github.io/xformers/components/ops.html, ``xformers.ops.fmha.attn_bias``):

* causal → ``LowerTriangularFromBottomRightMask``: the last query level with the last key,
  attnbench's alignment (``harness/patterns.py``);
* causal window ``W`` → ``LowerTriangularFromBottomRightLocalAttentionMask(W)``, which keeps
  ``p - W + 1 <= j <= p`` (its ``materialize`` applies ``tril(shift)`` then
  ``triu(shift - W + 1)`` with ``shift = Nk - Nq``) — attnbench's "the ``W`` keys ending at p";
* window ``W`` without causal → ``LocalAttentionFromBottomRightMask(window_left=W - 1,
  window_right=W - 1)``, documented as "query q attends key k if
  ``q - window_left <= k + s <= q + window_right`` with ``s = Nq - Nk``", i.e.
  ``p - (W - 1) <= j <= p + (W - 1)``, which is attnbench's ``|p - j| < W``.

Packed documents (``documents``) → ``BlockDiagonalCausalMask`` (or ``BlockDiagonalMask``)
``.from_seqlens`` over the documents' lengths, repeated for each batch element (xFormers packs
the batch into one sequence ``[1, B·N, H, D]``; a causal window → its
``make_local_attention(W)``, the ``W`` keys ending at ``p``). ALiBi has no structured bias: it is
an additive tensor ``[B, H, Nq, Nk]`` in the query dtype (expanded over the batch, rows padded
to a multiple of 8 elements as xFormers' kernels require) holding ``−slope_h·|p − j|`` and
``−inf`` where the pattern hides a pair — SDPA's mask, so its memory is part of the cost. The
biases' masks are checked on the CPU against the patterns' (``materialize``); the kernels run
on CUDA only.

Block layouts have no xFormers bias short of a dense tensor, so they are declined.
Grouped-query attention uses the documented 5-D form ``[B, N, Hkv, G, D]`` with keys and values
broadcast (stride 0) over the ``G`` query heads of each group; xFormers supports it for the
forward pass only. xFormers has CUDA kernels only: on a machine without CUDA it is listed
unavailable with the error xFormers itself raises on a tiny CPU call.

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch

from attnbench import Availability, Growth, Implementation, Problem, register
from attnbench.case.documents import document_lengths
from attnbench.case.kvcache import KVCache
from attnbench.case.variants import alibi_slopes, distance, positions
from attnbench.plugins.contract import AttentionFn

Tensor = torch.Tensor


def _one_line(text: str) -> str:
    return " ".join(text.split())


@lru_cache(maxsize=1)
def _import_xformers() -> tuple[Any, str]:
    """``xformers.ops`` and what its import printed (a warning when its C++/CUDA part does
    not load); raises the ImportError when xformers is missing."""
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed), contextlib.redirect_stdout(printed):
        import xformers.ops

    return xformers.ops, _one_line(printed.getvalue())


def _xformers_ops() -> Any:
    return _import_xformers()[0]


@lru_cache(maxsize=1)
def _availability() -> Availability:
    try:
        xops, import_note = _import_xformers()
    except Exception as exc:
        return Availability.no(f"xformers is not importable: {type(exc).__name__}: {exc}")
    if torch.cuda.is_available():
        return Availability.yes()
    note = f" (on import xformers printed: {import_note})" if import_note else ""
    q = torch.zeros(1, 2, 1, 8)  # [B, N, H, D], tiny
    try:
        xops.memory_efficient_attention(q, q, q)
    except Exception as exc:
        return Availability.no(
            "xformers' kernels need CUDA and torch.cuda.is_available() is False; memory_efficient_attention"
            f" raised on the CPU: {type(exc).__name__}: {_one_line(str(exc))}{note}"
        )
    return Availability.no(f"xformers' kernels need CUDA and torch.cuda.is_available() is False{note}")


def attention_bias(problem: Problem, device: torch.device | str = "cpu") -> Any:
    """The xFormers bias for ``problem``'s pattern (None for full attention); see the docstring."""
    bias = _xformers_ops().fmha.attn_bias
    window = problem.window
    if problem.bias == "alibi":
        return alibi_tensor(problem, device)
    if problem.documents != "1":
        lengths = document_lengths(problem.documents, problem.kv_len, problem.seed) * problem.batch
        kind = bias.BlockDiagonalCausalMask if problem.causal else bias.BlockDiagonalMask
        packed = kind.from_seqlens(lengths, device=torch.device(device))
        return packed.make_local_attention(window) if window else packed
    if problem.causal and window:
        return bias.LowerTriangularFromBottomRightLocalAttentionMask(window)
    if problem.causal:
        return bias.LowerTriangularFromBottomRightMask()
    if window:
        return bias.LocalAttentionFromBottomRightMask(window_left=window - 1, window_right=window - 1)
    return None


def alibi_tensor(problem: Problem, device: torch.device | str) -> Tensor:
    """``[B, H, Nq, Nk]`` in the query dtype: ALiBi's bias, ``−inf`` where the pattern hides a
    pair, expanded over the batch; each row padded to a multiple of 8 elements, the alignment
    xFormers' kernels ask of a tensor bias."""
    nq, nk = problem.seq_len, problem.kv_len
    padded = torch.empty(problem.heads, nq, -(-nk // 8) * 8, dtype=problem.torch_dtype, device=device)
    slopes = alibi_slopes(problem.heads).to(device, torch.float32)  # [H]
    gap = distance(positions(nq, nk, device=device).float(), torch.arange(nk, device=device))  # [Nq, Nk]
    hidden = None if problem.pattern.is_full else ~problem.pattern.mask(nq, nk, device=device)  # [Nq, Nk]
    for h in range(problem.heads):  # one head at a time: no [H, Nq, Nk] float32 temporary
        row = -slopes[h] * gap  # [Nq, Nk]
        padded[h, :, :nk] = row if hidden is None else row.masked_fill_(hidden, float("-inf"))
    return padded[None, :, :, :nk].expand(problem.batch, -1, -1, -1)  # [B, H, Nq, Nk], stride 0 over B


def decode_bias(problem: Problem, cache: KVCache) -> Any:
    """The padded-keys bias of a decode step: ``B`` blocks of ``S`` queries against each
    sequence's attended tokens, causal among the new ones (bottom-right), windowed if asked."""
    bias = _xformers_ops().fmha.attn_bias
    s, b = problem.seq_len, cache.batch
    lengths = [int(n) for n in cache.attended]
    device = cache.k.device
    if cache.paged:
        if problem.window or not problem.causal:
            raise ValueError("xformers' paged biases are causal without a window")
        assert cache.block_table is not None
        return bias.PagedBlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens(
            q_seqlen=[s] * b, kv_seqlen=lengths, block_tables=cache.block_table.to(torch.int32),
            page_size=cache.page, device=device,
        )  # fmt: skip
    padding = cache.k.shape[2]
    if problem.window:
        if not problem.causal:
            raise ValueError("xformers' padded-keys window is causal")
        plain = bias.BlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens(
            q_seqlen=[s] * b, kv_padding=padding, kv_seqlen=lengths, device=device
        )
        local = bias.BlockDiagonalCausalLocalAttentionPaddedKeysMask
        return local(q_seqinfo=plain.q_seqinfo, k_seqinfo=plain.k_seqinfo, _window_size=problem.window)
    kind = bias.BlockDiagonalCausalWithOffsetPaddedKeysMask if problem.causal else bias.BlockDiagonalPaddedKeysMask
    return kind.from_seqlens(q_seqlen=[s] * b, kv_padding=padding, kv_seqlen=lengths, device=device)


def decode_keys(t: Tensor, cache: KVCache, groups: int) -> Tensor:
    """The cache's keys or values as xFormers reads them: ``[1, tokens, Hkv, G, D]``, broadcast over
    the ``G`` query heads of each group (a contiguous cache's blocks one after another)."""
    hkv, d = t.shape[1], t.shape[-1]
    tokens = t.transpose(1, 2).reshape(1, -1, hkv, d)  # [1, B·capacity or pool tokens, Hkv, D]
    return tokens[:, :, :, None].expand(-1, -1, -1, groups, -1)


def _to_xformers(q: Tensor, k: Tensor, v: Tensor, groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """``[B, H, N, D]`` to ``[B, N, H, D]``, or to ``[B, N, Hkv, G, D]`` for grouped heads."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, N, H, D], k/v [B, Nk, Hkv, D]
    if groups == 1:
        return q, k, v
    b, nq, h, d = q.shape
    q = q.reshape(b, nq, h // groups, groups, d)  # [B, Nq, Hkv, G, D]; head h = hkv * G + g
    k, v = (t[:, :, :, None].expand(-1, -1, -1, groups, -1) for t in (k, v))  # [B, Nk, Hkv, G, D]
    return q, k, v


def _from_xformers(out: Tensor, shape: torch.Size) -> Tensor:
    """xFormers' output (shaped like its query) back to ``shape`` ``[B, H, Nq, D]``."""
    b, h, nq, d = shape
    return out.reshape(b, nq, h, d).transpose(1, 2)  # [B, H, Nq, D]


@register("xformers")
class XFormers(Implementation):
    description = "xformers.ops.memory_efficient_attention with xFormers' bottom-right causal/local biases (CUDA)"
    exact = True
    library = "xformers"
    computes = ("full", "causal", "window")
    devices = ("cuda",)
    dtypes = ("float32", "bfloat16", "float16")
    features = frozenset({"causal", "window", "gqa", "cross", "backward", "decode", "alibi", "documents"})
    growth = Growth(2.0, 1.0)

    def available(self) -> Availability:
        return _availability()

    def supports(self, problem: Problem) -> str | None:
        reason = super().supports(problem)
        if reason is not None and problem.pattern.layout is not None:
            return f"{reason} (xformers has no block-layout bias short of a dense mask)"
        if reason is not None:
            return reason
        if problem.gqa and problem.needs_grad:
            return "xformers supports grouped-query attention (5-D inputs) for the forward pass only"
        if problem.bias == "alibi" and (problem.gqa or problem.kind.reads_cache):
            return (
                "alibi: xformers takes it as a [B, H, Nq, Nk] tensor bias, mapped here for equal query and KV"
                " heads outside decode"
            )
        if problem.documents != "1" and problem.window and not problem.causal:
            return "documents: xformers' block-diagonal local attention is causal"
        if problem.kind.reads_cache and problem.cache != "contiguous" and (problem.window or not problem.causal):
            return "xformers' paged padded-keys bias is causal and has no window"
        if problem.kind.reads_cache and problem.window and not problem.causal:
            return "xformers' padded-keys window is causal"
        return None

    def prepare(self, problem: Problem) -> AttentionFn:
        xops = _xformers_ops()
        bias = attention_bias(problem, problem.device)
        groups, scale = problem.heads // problem.kv_heads, problem.scale
        packed = problem.documents != "1" and problem.bias != "alibi"  # ALiBi's tensor holds the documents' mask

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            b = q.shape[0]
            if packed:  # the batch as one sequence of B·N tokens (a copy for B > 1)
                q, k, v = (t.transpose(0, 1).reshape(1, t.shape[1], -1, t.shape[3]) for t in (q, k, v))
            xq, xk, xv = _to_xformers(q, k, v, groups)  # [B, N, H, D] or [B, N, Hkv, G, D]
            out = xops.memory_efficient_attention(xq, xk, xv, attn_bias=bias, scale=scale)  # shaped like xq
            out = _from_xformers(out, q.shape)  # [B, H, Nq, D] ([1, H, B·N, D] packed)
            return out.reshape(out.shape[1], b, -1, out.shape[3]).transpose(0, 1) if packed else out

        return run

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return self.prepare(problem)(q, k, v)

    def prepare_decode(self, problem: Problem, cache: KVCache) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """A decode step with xFormers' padded-keys biases: the batch's new tokens as one
        sequence of blocks ``[1, B·S, Hkv, G, D]`` against the cache as ``B`` blocks padded to its
        capacity (or, paged, the pool with the block table). xFormers wants tokens before heads,
        so the cache (``[B, Hkv, capacity, D]``) is transposed into that layout inside the step."""
        xops = _xformers_ops()
        bias = decode_bias(problem, cache)
        groups, scale = problem.heads // problem.kv_heads, problem.scale
        b, s = cache.batch, problem.seq_len

        def step(q: Tensor, k_new: Tensor, v_new: Tensor) -> Tensor:
            cache.append(k_new, v_new)
            xq = q.transpose(1, 2).reshape(1, b * s, problem.kv_heads, groups, problem.head_dim)  # [1, B·S, Hkv, G, D]
            xk, xv = (decode_keys(t, cache, groups) for t in (cache.k, cache.v))  # [1, tokens, Hkv, G, D]
            out = xops.memory_efficient_attention(xq, xk, xv, attn_bias=bias, scale=scale)  # [1, B·S, Hkv, G, D]
            return out.reshape(b, s, problem.heads, problem.head_dim).transpose(1, 2)  # [B, H, S, D]

        return step
