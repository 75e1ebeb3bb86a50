"""Split-KV decoding ("flash-decoding"): one new token against a long cache, on every core.

The problem
-----------
A decode step has one query row (or a few) per head and a long cache of keys and values. A
kernel that parallelises over (batch, head, query block) has, at batch 1, only as many tasks as
heads, each a thin matrix-vector product; and one that treats every query head on its own reads
each key and value once per query head sharing it (``G = H / Hkv`` times with grouped-query
attention). Its cost is reading the cache; the arithmetic is small.

The algorithm
-------------
For each sequence ``b`` of the batch, with ``L_b`` attended tokens:

1. **Grouped queries.** The ``G`` query heads of a KV head, and the ``S`` new tokens, form one
   ``[G·S, D]`` matrix per KV head, so each cached key and value is read once for all of them:
   ``q_b`` is ``[Hkv, G·S, D]``.
2. **Split.** The attended keys are cut into ``n`` chunks of ``C`` tokens, ``K_b`` viewed as
   ``[Hkv, n, C, D]`` (a view of a contiguous cache; a paged cache's pages are gathered, a
   chunk being a whole number of pages). One batched product computes every chunk's scores,
   ``[Hkv, n, G·S, C]``, so the batch of the product — ``Hkv · n`` independent tasks — keeps every
   core busy whatever the batch size.
3. **Partial softmax per chunk.** Each chunk ``c`` gives its output normalised on its own keys,
   ``o_c``, and its log-sum-exp ``lse_c = log Σ exp(s)``. On the CPU one call of PyTorch's fused
   flash kernel does every chunk (the chunks are its batch; it returns the log-sum-exp), so no
   score matrix is written back to memory between elementwise passes.
4. **Combine.** The log-sum-exp combination of FlashDecoding and FlashInfer:
   ``out = Σ_c w_c o_c`` with ``w = softmax_c(lse_c)``.

A window or the causal order among several new tokens masks pairs only near the end of the
keys: the scores are masked where a row's range ``[lo, hi)`` excludes them (a mask built once
per step's shape, outside the timing). Low-precision caches are multiplied in their own dtype
where the machine has matrix units for it, else (and for the softmax) in float32.

Cost
----
Time ``≈ bytes(K_b, V_b) / bandwidth``: every valid key and value is read once per step (twice
for a paged cache: gathered, then multiplied), plus ``O(Hkv · G · S · L_b · D)`` arithmetic.
Extra memory: the scores of one sequence, ``Hkv · G · S · L_b`` floats, and for a paged cache a
copy of its pages.

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attnbench import Growth, Implementation, Problem, register
from attnbench.case.kvcache import KVCache

Tensor = torch.Tensor
#: Keys per chunk (a multiple of the page size for a paged cache).
CHUNK = 2048


def low_precision_matmul_is_fast() -> bool:
    """Whether this CPU multiplies bfloat16 natively (else float32 is the faster way)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


Partial = tuple[Tensor, Tensor]  # (normalised output [Hkv, n, R, D], log-sum-exp [Hkv, n, R]), float32


def attend_chunks(qg: Tensor, k: Tensor, v: Tensor, scale: float, hidden: Tensor | None, upcast: bool) -> Partial:
    """Partial attention of ``qg`` ``[Hkv, R, D]`` over ``n`` chunks ``k``, ``v`` ``[Hkv, n, C, D]``,
    each chunk normalised on its own, with its log-sum-exp. ``hidden`` ``[n, R, C]`` is True where
    a pair is masked; ``upcast`` multiplies a low-precision cache in float32 (where that is
    faster than its own dtype). On the CPU, PyTorch's fused flash kernel does each chunk (it
    returns the log-sum-exp); elsewhere, plain products."""
    if qg.device.type == "cpu":
        return _fused_cpu(qg, k, v, scale, hidden)
    if upcast:
        qg, k, v = qg.float(), k.float(), v.float()
    s = torch.matmul(qg[:, None], k.transpose(-1, -2)).float().mul_(scale)  # [Hkv, n, R, C]
    if hidden is not None:
        s.masked_fill_(hidden[None], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # [Hkv, n, R]
    p = s.sub_(torch.nan_to_num(lse, neginf=0.0)[..., None]).exp_()  # normalised per chunk
    return torch.matmul(p.to(v.dtype), v).float(), lse  # [Hkv, n, R, D]


def _fused_cpu(qg: Tensor, k: Tensor, v: Tensor, scale: float, hidden: Tensor | None) -> Partial:
    """The chunks as the batch of one call of PyTorch's CPU flash kernel: ``Hkv · n`` tasks,
    each reading its chunk of keys once for all ``R`` grouped query rows."""
    n = k.shape[1]
    qc = qg[None].expand(n, *qg.shape)  # [n, Hkv, R, D] (no copy)
    kc, vc = k.transpose(0, 1), v.transpose(0, 1)  # [n, Hkv, C, D] (views)
    mask = None  # additive, in the query's dtype (what the kernel takes): [n, 1, R, C]
    if hidden is not None:
        mask = torch.zeros(hidden.shape, dtype=qg.dtype, device=qg.device).masked_fill_(hidden, float("-inf"))[:, None]
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        qc, kc, vc, 0.0, False, attn_mask=mask, scale=scale
    )  # [n, Hkv, R, D], [n, Hkv, R]
    return out.transpose(0, 1).float().nan_to_num_(0.0), lse.transpose(0, 1).float()


def combine(parts: list[Partial]) -> Tensor:
    """Merge chunk partials into ``[Hkv, R, D]``: weights ``exp(lse_c − logsumexp_c lse_c)``."""
    o = torch.cat([p[0] for p in parts], dim=1)  # [Hkv, N, R, D]
    lse = torch.cat([p[1] for p in parts], dim=1)  # [Hkv, N, R]
    w = torch.softmax(lse, dim=1).nan_to_num_(0.0)  # [Hkv, N, R]; a chunk that saw nothing weighs 0
    return (o.nan_to_num_(0.0) * w[..., None]).sum(dim=1)  # [Hkv, R, D]


class SequencePlan:
    """One sequence's keys — only the range its rows may see (a window's band), cut into whole
    chunks and a tail — and the masks of the chunks that need one (built once)."""

    def __init__(self, cache: KVCache, b: int, lo: Tensor, hi: Tensor, chunk: int, groups: int) -> None:
        self.b = b
        self.first, self.last = int(lo.min()), int(hi.max())  # keys any new token may see
        self.length = self.last - self.first
        self.chunk = chunk
        self.whole = self.length // chunk  # full chunks
        self.index = cache.token_index(b)[self.first : self.last] if cache.paged else None  # [L] pool slots
        keys = torch.arange(self.first, self.last, device=lo.device)  # [L]
        keep = (keys[None, :] >= lo[:, None]) & (keys[None, :] < hi[:, None])  # [S, L]
        hidden = ~keep.repeat(groups, 1)  # [G·S, L]: row g·S + s
        split = self.whole * chunk
        self.parts: list[tuple[slice, Tensor | None, Tensor | None]] = []  # (keys, hidden [n, R, C], dead [n, R])
        if self.whole:
            self.parts.append(
                (slice(0, split), *_masks(hidden[:, :split].reshape(-1, self.whole, chunk).transpose(0, 1)))
            )
        if split < self.length:  # the tail: one shorter chunk
            self.parts.append((slice(split, self.length), *_masks(hidden[None, :, split:])))

    def keys(self, cache: KVCache) -> tuple[Tensor, Tensor]:
        """``[Hkv, L, D]`` keys and values in range: views of a contiguous cache, gathered pages otherwise."""
        if self.index is None:
            return cache.k[self.b, :, self.first : self.last], cache.v[self.b, :, self.first : self.last]
        return cache.k[0][:, self.index], cache.v[0][:, self.index]

    def attend(self, qg: Tensor, cache: KVCache, scale: float, upcast: bool) -> Tensor:
        k, v = self.keys(cache)  # [Hkv, L, D]
        hkv, _, d = k.shape
        partials = []
        for keys, hidden, dead in self.parts:
            n = hidden.shape[0] if hidden is not None else (keys.stop - keys.start) // self.chunk or 1
            size = (keys.stop - keys.start) // n
            kc = k[:, keys].reshape(hkv, n, size, d)  # [Hkv, n, C, D] (a view when contiguous)
            vc = v[:, keys].reshape(hkv, n, size, d)
            o, lse = attend_chunks(qg, kc, vc, scale, hidden, upcast)
            if dead is not None:  # rows that see nothing in a chunk weigh nothing
                lse = lse.masked_fill(dead.transpose(0, 1)[None], float("-inf"))
            partials.append((o, lse))
        return combine(partials)  # [Hkv, G·S, D]


def _masks(hidden: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """``hidden`` ``[n, R, C]`` (None when nothing is hidden) and the rows it hides entirely ``[n, R]``."""
    if not bool(hidden.any()):
        return None, None
    dead = hidden.all(dim=-1)
    return hidden.contiguous(), (dead if bool(dead.any()) else None)


@register("split_kv")
class SplitKV(Implementation):
    description = "Split-KV decoder (flash-decoding): grouped heads, cache chunks in parallel, LSE combine"
    exact = True
    computes = ("full", "causal", "window")
    devices = ("cpu", "cuda")
    dtypes = ("float32", "bfloat16", "float16")
    features = frozenset({"causal", "window", "gqa", "cross", "decode"})
    requires = frozenset({"decode"})  # a decoder: decode steps against a KV cache only
    growth = Growth(1.0, 1.0)  # per step: linear in the cached tokens

    def prepare_decode(self, problem: Problem, cache: KVCache) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """Each sequence's chunks and masks, once, outside the timing."""
        chunk = CHUNK if not cache.paged else max(cache.page, CHUNK // cache.page * cache.page)
        g = problem.heads // problem.kv_heads
        lo, hi = cache.ranges(problem.pattern)  # [B, S] each
        plans = [SequencePlan(cache, b, lo[b], hi[b], chunk, g) for b in range(cache.batch)]
        scale, hkv, s, d = problem.scale, problem.kv_heads, problem.seq_len, problem.head_dim
        low = problem.torch_dtype in (torch.bfloat16, torch.float16)
        upcast = low and torch.device(problem.device).type == "cpu" and not low_precision_matmul_is_fast()

        def step(q: Tensor, k_new: Tensor, v_new: Tensor) -> Tensor:
            cache.append(k_new, v_new)
            out = torch.empty_like(q)  # [B, H, S, D]
            for plan in plans:
                qg = q[plan.b].reshape(hkv, g * s, d)  # [Hkv, G·S, D]: head hkv·G + g, row g·S + s
                out[plan.b] = plan.attend(qg, cache, scale, upcast).to(q.dtype).view(q.shape[1], s, d)
            return out

        return step

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        raise NotImplementedError("split_kv runs decode steps only (prepare_decode)")
