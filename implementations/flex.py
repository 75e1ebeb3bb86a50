"""FlexAttention under ``torch.compile``: the pattern as a mask function, compiled into a kernel
that skips the blocks the mask empties.

FlexAttention (``torch.nn.attention.flex_attention``) takes the pattern as a ``mask_mod(b, h,
q_idx, kv_idx) -> bool``. ``create_block_mask`` evaluates it once per problem into a
``BlockMask``: which ``128 × 128`` tiles are empty (skipped), full (no masking needed) or partial
(mask applied element-wise). Under ``torch.compile`` Inductor fuses the whole attention into one
kernel, so work follows the kept tiles: dense attention costs ``N²``, a sliding window ``N·W``.

The mask function is built from :class:`attnbench.case.patterns.Pattern`, bottom-right aligned
(query ``i`` sits at key position ``p = i + Nk - Nq``): causal ``j <= p``; window ``|p - j| < W``
(with causal, ``p - W < j <= p``); a block layout indexes the layout's block table, captured as
a tensor. A query that may see no key outputs zeros (FlexAttention's convention, as SDPA's).

Compilation happens in :meth:`FlexAttention.prepare`, outside the timing: build the block
mask, compile, and run once on inputs of the problem's shapes so the compile really happens —
under ``no_grad``, where the harness times and judges every forward, and for a case with
gradients with autograd on and its backward too. Each grad mode is a separate compiled entry (the
first in a process costs ~4-20 s on 2 CPU cores, each later one ~0.4-0.7 s with Inductor's cache
warm): a caller that runs the returned call under another grad mode (autograd on without a
backward, ``inference_mode``) compiles that entry on its first call there. Its duration is
``last_setup_s`` and the returned call's ``setup_s``. Compiled calls are cached by pattern and
shapes (``dynamic=False``: a new shape compiles anew). ``torch.compile`` keeps its cache, and
its limit of 8 recompilations, per code object and silently falls back to the unfused eager
path beyond it; each cache entry therefore compiles its own copy of the code. FlexAttention's
backward runs on CUDA only (PyTorch 2.13 raises NotImplementedError on the CPU).

Soft-capping and ALiBi are a ``score_mod`` (``c·tanh(s/c)``, ``−slope_h·|p − j|``), compiled into
the kernel; sinks use the log-sum-exp FlexAttention returns: the output times
``sigmoid(lse − σ_h)``, which is the sink's share of each row's denominator taken out (on CUDA:
torch.compile on CPU returns no log-sum-exp).

Decoding (``prepare_decode``) reads the cache itself: a contiguous cache with a block mask of
each sequence's valid tokens, a paged pool (``[1, Hkv, tokens, D]``, broadcast over the batch)
with a mask that maps each pool token back to its sequence and position through the inverse of
the block table — the approach of PyTorch's own paged FlexAttention.

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # imported where used: torch._dynamo costs 2 s at every worker's start
    from torch.nn.attention.flex_attention import BlockMask

from attnbench import Availability, Growth, Implementation, Problem, register
from attnbench.case.kvcache import KVCache
from attnbench.case.patterns import Pattern
from attnbench.case.variants import alibi_slopes, case_sinks
from attnbench.implementations._inductor_isa import use_cached_probe
from attnbench.measure.devices import device
from attnbench.plugins.contract import ALL_FEATURES

Tensor = torch.Tensor
MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
CACHE_SIZE = 32


def mask_mod_for(pattern: Pattern, nq: int, nk: int, device: str | torch.device) -> MaskMod:
    """``mask_mod(b, h, q_idx, kv_idx)``: True where ``pattern`` keeps the pair (see the docstring)."""
    offset = nk - nq  # bottom-right alignment: p = q_idx + offset
    causal, window, layout = pattern.causal, pattern.window, pattern.layout
    table = None if layout is None else layout.table(nq, nk).to(device)  # [rows, ceil(Nk/block)] bool
    block = 1 if layout is None else layout.block
    shift = 0 if layout is None else layout.shift(nq, nk)  # table row of query i: (i + shift) // block
    last_row, last_col = (0, 0) if table is None else (table.shape[0] - 1, table.shape[1] - 1)
    docs = pattern.document_of(torch.arange(nk)).to(device) if pattern.documents else None  # [Nk]
    first = pattern.first

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        p = q_idx + offset
        keep = kv_idx == kv_idx  # all True, shaped like the indices
        if causal:
            keep = keep & (kv_idx <= p)
        if window:
            keep = keep & (p - kv_idx < window)
            if not causal:
                keep = keep & (kv_idx - p < window)
        if docs is not None:  # packed documents: the query's own only (clamped like the table)
            keep = keep & (docs[kv_idx.clamp(max=nk - 1)] == docs[p.clamp(min=0, max=nk - 1)])
        if table is not None:
            # clamped: the kernel may evaluate padding positions past Nq or Nk (masked anyway)
            keep = keep & table[((q_idx + shift) // block).clamp(max=last_row), (kv_idx // block).clamp(max=last_col)]
        if first:  # StreamingLLM's sinks: the first keys too, within the causal limit
            keep = keep | ((kv_idx < first) & (kv_idx <= p)) if causal else keep | (kv_idx < first)
        return keep

    return mask_mod


def decode_mask_mod(problem: Problem, cache: KVCache) -> MaskMod:
    """``mask_mod(b, h, q_idx, kv_idx)`` over the cache's token axis for a decode step: the
    token's logical position (through the inverse block table of a paged pool) within the query's
    ``[lo, hi)`` range of its sequence."""
    lo, hi = cache.ranges(problem.pattern)  # [B, S]
    if not cache.paged:

        def contiguous(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return (kv_idx >= lo[b, q_idx]) & (kv_idx < hi[b, q_idx])

        return contiguous
    assert cache.block_table is not None
    page, pool_pages = cache.page, cache.k.shape[2] // cache.page
    logical = torch.full((cache.batch, pool_pages), -1, dtype=torch.int64, device=lo.device)  # [B, pool pages]
    pages = cache.block_table.shape[1]
    logical.scatter_(1, cache.block_table, torch.arange(pages, device=lo.device).expand(cache.batch, -1))

    def paged(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        owner = logical[b, kv_idx // page]
        position = owner * page + kv_idx % page
        return (owner >= 0) & (position >= lo[b, q_idx]) & (position < hi[b, q_idx])

    return paged


def _flex_call(
    q: Tensor, k: Tensor, v: Tensor, block_mask: BlockMask | None, scale: float, gqa: bool,
    score_mod: ScoreMod | None = None, sink: Tensor | None = None,
) -> Tensor:  # fmt: skip
    from torch.nn.attention.flex_attention import flex_attention

    if sink is None:
        return flex_attention(q, k, v, score_mod, block_mask, scale, gqa)  # type: ignore[return-value]
    out, lse = flex_attention(q, k, v, score_mod, block_mask, scale, gqa, return_lse=True)  # [B, H, Nq, D], [B, H, Nq]
    # the sink joins each row's denominator: out · Σe^s / (Σe^s + e^σ) = out · sigmoid(lse − σ)
    return out * torch.sigmoid(lse - sink)[..., None].to(out.dtype)  # type: ignore[no-any-return]


def score_mod_for(problem: Problem) -> ScoreMod | None:
    """FlexAttention's ``score_mod`` for the case's soft-cap and ALiBi bias (None when neither)."""
    cap = problem.softcap
    slopes = alibi_slopes(problem.heads).to(problem.device, torch.float32) if problem.bias == "alibi" else None
    if not cap and slopes is None:
        return None
    offset = problem.kv_len - problem.seq_len  # bottom-right: query i sits at key position i + offset

    def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        if cap:
            score = torch.tanh(score / cap) * cap
        if slopes is not None:
            score = score - slopes[h] * (q_idx + offset - kv_idx).abs()
        return score

    return score_mod


def _compile_fresh() -> Callable[..., Tensor]:
    """``torch.compile`` of a fresh copy of :func:`_flex_call`'s code, so that its compiled
    entries (and recompilation limit) are its own."""
    code = _flex_call.__code__.replace()
    fn = types.FunctionType(code, _flex_call.__globals__, _flex_call.__name__)
    return torch.compile(fn, dynamic=False)  # type: ignore[return-value]


@dataclass
class CompiledFlex:
    """A prepared FlexAttention call: ``(q, k, v) -> out``, plus the set-up it took."""

    compiled: Callable[..., Tensor]
    block_mask: BlockMask | None
    scale: float
    gqa: bool
    setup_s: float = 0.0
    score_mod: ScoreMod | None = None
    sink: Tensor | None = None  # [1, H, 1] sink logits

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return self.compiled(q, k, v, self.block_mask, self.scale, self.gqa, self.score_mod, self.sink)


#: Above this many (query, key) pairs the block mask is built under torch.compile (16K x 16K).
EAGER_MASK_PAIRS = 2**28


def _cache_key(problem: Problem) -> tuple[Any, ...]:
    p = problem
    return (
        p.pattern, p.batch, p.heads, p.kv_heads, p.seq_len, p.kv_len, p.head_dim, p.dtype, p.device, p.needs_grad,
        p.softcap, p.bias, p.sinks, p.seed if p.learned_sinks else 0,
    )  # fmt: skip


def _build(problem: Problem) -> CompiledFlex:
    """Block mask, compile, and warm-up calls on inputs of ``problem``'s shapes."""
    if device(problem.device).kind == "cpu":
        use_cached_probe()
    nq, nk = problem.seq_len, problem.kv_len
    block_mask = None
    if not problem.pattern.is_full:
        mask_mod = mask_mod_for(problem.pattern, nq, nk, problem.device)
        # Evaluated eagerly, the mask is an int64 [Nq, Nk] (34 GB at 64K tokens); compiled, it is
        # evaluated block by block. Compiling costs seconds, so only long sequences do.
        compiled_mask = nq * nk > EAGER_MASK_PAIRS
        from torch.nn.attention.flex_attention import create_block_mask

        block_mask = create_block_mask(mask_mod, None, None, nq, nk, device=problem.device, _compile=compiled_mask)
    sink = case_sinks(problem)  # [H], or None
    sink = None if sink is None else sink[None, :, None]  # [1, H, 1]: beside the log-sum-exp [B, H, Nq]
    call = CompiledFlex(_compile_fresh(), block_mask, problem.scale, problem.gqa, 0.0, score_mod_for(problem), sink)
    q, k, v = (torch.zeros_like(t) for t in problem.make_inputs())  # [B, H, Nq, D], [B, Hkv, Nk, D] x2
    if problem.needs_grad:  # the entry with autograd on, and its backward
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        call(*leaves).sum().backward()
    with torch.no_grad():  # the entry every forward is timed and judged in
        call(q, k, v)
    return call


@lru_cache(maxsize=1)
def _availability() -> Availability:
    if torch.cuda.is_available():
        return Availability.yes()
    try:  # Inductor's CPU code needs a C++ compiler
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as exc:
        return Availability.no(f"torch.compile cannot build CPU kernels here: {type(exc).__name__}: {exc}")
    return Availability.yes()


@register("flex")
class FlexAttention(Implementation):
    description = "FlexAttention under torch.compile with a BlockMask from the pattern (block-sparse skipping)"
    exact = True
    library = "PyTorch"
    computes = ("full", "causal", "window", "block-sparse")
    devices = ("cpu", "cuda")
    dtypes = ("float32", "bfloat16", "float16")
    features = ALL_FEATURES  # every pattern and variant a case can ask for
    growth = Growth(2.0, 1.0)  # time N² dense; less where the block mask skips tiles

    def __init__(self) -> None:
        self.last_setup_s: float | None = None
        self._cache: dict[tuple[Any, ...], CompiledFlex] = {}

    def available(self) -> Availability:
        return _availability()

    def supports(self, problem: Problem) -> str | None:
        reason = super().supports(problem)
        if reason is not None:
            return reason
        if problem.needs_grad and not device(problem.device).is_gpu:
            return "FlexAttention does not support backward on CPU (PyTorch raises NotImplementedError)"
        if problem.learned_sinks and not device(problem.device).is_gpu:
            return "sinks need FlexAttention's log-sum-exp, which torch.compile on CPU does not return (return_lse)"
        if problem.kind.reads_cache and problem.varies_scores:  # a soft-cap, ALiBi or learned sinks
            return (
                "decoding with a soft-cap, ALiBi or sinks: this decode path addresses the cache through its"
                " block table and takes no score_mod yet"
            )
        return None

    def prepare(self, problem: Problem) -> CompiledFlex:
        start = time.perf_counter()
        key = _cache_key(problem)
        cached = self._cache.get(key)
        if cached is None:
            cached = _build(problem)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))  # the oldest
            self._cache[key] = cached
        setup_s = time.perf_counter() - start
        self.last_setup_s = setup_s
        return replace(cached, setup_s=setup_s)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return self.prepare(problem)(q, k, v)

    def prepare_decode(self, problem: Problem, cache: KVCache) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """A decode step on the cache itself: a block mask keeps each sequence's valid tokens (a
        paged pool is addressed through the inverse of its block table), compiled once."""
        started = time.perf_counter()
        if device(problem.device).kind == "cpu":
            use_cached_probe()
        mask_mod = decode_mask_mod(problem, cache)
        tokens = cache.k.shape[2]
        from torch.nn.attention.flex_attention import create_block_mask

        block_mask = create_block_mask(mask_mod, cache.batch, None, problem.seq_len, tokens, device=problem.device)
        call = CompiledFlex(_compile_fresh(), block_mask, problem.scale, problem.gqa)
        q0 = torch.zeros(
            cache.batch, problem.heads, problem.seq_len, problem.head_dim, dtype=cache.k.dtype, device=cache.k.device
        )
        with torch.no_grad():
            call(q0, cache.k, cache.v)  # compile now, outside the timing
        self.last_setup_s = time.perf_counter() - started

        def step(q: Tensor, k_new: Tensor, v_new: Tensor) -> Tensor:
            cache.append(k_new, v_new)
            return call(q, cache.k, cache.v)  # [B, H, S, D]

        return step
