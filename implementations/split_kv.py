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
   ``[Hkv, n, C, D]`` (a view of the cache; for a paged one, see below). One batched product
   computes every chunk's scores, ``[Hkv, n, G·S, C]``, so the batch of the product — ``Hkv · n``
   independent tasks — keeps every core busy whatever the batch size.
3. **Partial softmax per chunk.** Each chunk ``c`` gives its output normalised on its own keys,
   ``o_c``, and its log-sum-exp ``lse_c = log Σ exp(s)``, by one of two paths. *Fused*: one call
   of PyTorch's CPU flash kernel does every chunk (the chunks are its batch; it returns the
   log-sum-exp), so no score matrix is written back between elementwise passes. *Products*: the
   chunks as one stretch of keys, two matrix products around an in-place softmax of its
   ``[Hkv, G·S, L]`` float32 scores (4 MiB at 32K keys and 8 KV heads of 4 rows), the products
   batched over the KV heads (``batched``) or one head at a time (``per_head``: a low-precision
   batched product copies a strided cache first). Which is fastest depends on the machine and
   the dtype (the fused kernel's skinny products are slow where the CPU multiplies bfloat16
   natively; a low-precision batched product is fast or not by the stretch's length), so each
   sequence times them on its own keys when the step is prepared, outside the timing, and keeps
   the fastest (:func:`fastest`; sequences of the same length and layout share one trial).
4. **Combine.** The log-sum-exp combination of FlashDecoding and FlashInfer:
   ``out = Σ_c w_c o_c`` with ``w = softmax_c(lse_c)``.

A window or the causal order among several new tokens masks pairs only near the end of the
keys: the scores are masked where a row's range ``[lo, hi)`` excludes them (a mask built once
per step's shape, outside the timing).

ALiBi (``bias = "alibi"``) is an additive float32 bias per chunk, ``−slope·|p − j|`` with ``p``
each new token's position at the end of its own sequence and ``j`` each key's, built once with
the masks. Learned sinks join the combination as one more partial whose log-sum-exp is the sink
logit and whose output is zero: the sink takes its share of each row's denominator and carries
no value. A soft-cap needs a hook on the scores inside the fused kernel, which it has not: such
a case is ``unsupported``.

Values of their own head dimension (``v_head_dim``) make the chunks plain products: the fused
kernel wants one head size. A latent cache (multi-head latent attention's absorbed form, values
the keys' first ``Dv`` columns) is passed as both keys and values: one tensor read, the fused
kernel on it, the output's first ``Dv`` columns kept (the other ``D − Dv`` cost arithmetic, not
reads).

A paged cache is read where its pages lie. Softmax does not depend on the order of the keys,
only on which keys a row may see: each run of consecutive pool pages the sequence owns (at least
:data:`MIN_RUN` tokens; at batch 1 the whole pool) is read in storage order as if contiguous, its
masks built from each slot's position in the sequence (from the block table). Pages scattered
among other sequences' are gathered, :data:`GATHER_TOKENS` at a time, into a buffer small enough
to stay in the last-level cache. Low-precision caches are multiplied in their own dtype
where the machine has matrix units for it, else (and for the softmax) in float32.

Cost
----
Time ``≈ bytes(K_b, V_b) / bandwidth``: every valid key and value is read once per step, plus
``O(Hkv · G · S · L_b · D)`` arithmetic; gathered pages are copied once more (PyTorch's
``index_select`` runs at about a third of the triad on a two-core CPU). Extra memory: the
partials of each chunk, and for gathered pages a buffer of :data:`GATHER_TOKENS` keys and values.

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnbench import Growth, Implementation, Problem, register
from attnbench.case.kvcache import KVCache
from attnbench.case.variants import alibi_slopes, case_sinks, distance
from attnbench.implementations._chunk_partials import (
    attend_chunks,
    combine,
    fastest,
    low_precision_matmul_is_fast,
)

Tensor = torch.Tensor
#: Keys per chunk of keys read where they lie.
CHUNK = 2048
#: Keys per chunk of gathered pages.
GATHER_CHUNK = 512
#: Tokens gathered at once: their keys and values stay in the last-level cache.
GATHER_TOKENS = 512
#: A run of consecutive pool pages this many tokens long is read where it lies.
MIN_RUN = 512
#: The ways a chunk's partial is computed, in order of preference on a tie; each case keeps the
#: fastest of those it can take, timed when it is prepared (a test may narrow this to one).
PATHS = ("fused", "batched", "per_head")


#: (tokens, additive bias [n, 1 or Hkv, R, C] float32, dead [n, R]) per block of chunks
Parts = list[tuple[slice, Tensor | None, Tensor | None]]


@dataclass(frozen=True)
class Rows:
    """The grouped query rows of one sequence (row ``g·S + s`` of KV head ``hkv`` is query head
    ``hkv·G + g``, new token ``s``): their key positions and, with ALiBi, their heads' slopes."""

    groups: int
    positions: Tensor  # [R] float64: where each row's token sits among the keys
    slopes: Tensor | None = None  # [Hkv, R] float64


class Segment:
    """Keys a sequence reads as one stretch: a range of a token axis read where it lies (``start``,
    ``length``; the positions of its slots in ``positions``), or pool slots gathered in small
    groups (``index``). Cut into whole chunks and a tail, with the masks of those that need one."""

    def __init__(self, positions: Tensor, lo: Tensor, hi: Tensor, chunk: int, rows: Rows,
                 start: int = 0, index: Tensor | None = None) -> None:  # fmt: skip
        self.start, self.index, self.length, self.chunk = start, index, int(positions.shape[0]), chunk
        keep = (positions[None, :] >= lo[:, None]) & (positions[None, :] < hi[:, None])  # [S, L]
        hidden = ~keep.repeat(rows.groups, 1)  # [G·S, L]: row g·S + s
        alibi = None  # [Hkv, R, L] float32: ALiBi's −slope·|p − j|
        if rows.slopes is not None:
            alibi = (-rows.slopes[:, :, None] * distance(rows.positions[:, None], positions.double())[None]).float()
        whole = self.length // chunk
        split = whole * chunk
        self.parts: Parts = []
        for begin, end, n in ((0, split, whole), (split, self.length, 1)):  # whole chunks, then the tail
            if end > begin:
                band = None if alibi is None else alibi[..., begin:end]
                self.parts.append((slice(begin, end), *_bias(hidden[:, begin:end], band, n)))


class SequencePlan:
    """One sequence's keys — only the range its rows may see (a window's band) — as segments, with
    the masks of the chunks that need one (built once).

    A contiguous cache is one segment. A paged cache is read where its pages lie: softmax does not
    depend on the order of the keys, so each run of consecutive pool pages the sequence owns (at
    least :data:`MIN_RUN` tokens) is a segment in storage order, its masks built from each slot's
    position (from the block table); the pages of shorter runs are gathered, a few chunks at a
    time, into a buffer small enough to stay in the last-level cache."""

    def __init__(self, cache: KVCache, b: int, lo: Tensor, hi: Tensor, chunk: int, rows: Rows) -> None:
        self.b = b
        self.path = "batched"  # how its chunks are computed (one of PATHS), chosen when the step is prepared
        self.first, self.last = int(lo.min()), int(hi.max())  # keys any new token may see
        self.group = max(1, GATHER_TOKENS // GATHER_CHUNK)  # chunks gathered at once
        self.buffers: list[Tensor | None] = [None, None]  # keys' and values' gather buffers
        positions = torch.arange(self.first, self.last, device=lo.device)  # [L]
        if not cache.paged:
            self.segments = [Segment(positions, lo, hi, chunk, rows, start=self.first)]
            return
        self.segments = []
        index = cache.token_index(b)[self.first : self.last]  # [L] pool slots, in position order
        page = cache.page
        where = torch.full((cache.k.shape[2],), -1, dtype=torch.int64, device=lo.device)  # [slots]: position
        where[index] = positions
        pages = torch.unique(index // page)  # [P] pool pages read, ascending
        breaks = torch.nonzero(pages[1:] != pages[:-1] + 1).flatten() + 1
        gathered = torch.zeros_like(index, dtype=torch.bool)  # [L]
        for run in torch.tensor_split(pages, breaks.tolist()):
            first, count = int(run[0]) * page, int(run.shape[0]) * page
            if count < MIN_RUN:
                gathered |= (index >= first) & (index < first + count)
                continue
            self.segments.append(Segment(where[first : first + count], lo, hi, chunk, rows, start=first))
        if bool(gathered.any()):
            self.segments.append(Segment(positions[gathered], lo, hi, GATHER_CHUNK, rows, index=index[gathered]))

    def chunks(self, cache: KVCache, segment: Segment, start: int, n: int, size: int) -> tuple[Tensor, Tensor]:
        """``[Hkv, n, C, D]`` keys and values of ``n`` chunks of ``size`` tokens from ``start`` in
        ``segment``: views where the keys lie; gathered pages copied into this plan's buffer, small
        enough to stay in the last-level cache."""
        end = start + n * size
        if segment.index is None:
            at = segment.start
            row = 0 if cache.paged else self.b
            k = cache.k[row, :, at + start : at + end]  # [Hkv, n·C, D] (a view)
            v = k if cache.latent else cache.v[row, :, at + start : at + end]  # latent: the keys, all D columns
        else:
            index = segment.index[start:end]
            k = torch.index_select(cache.k[0], 1, index, out=self._buffer(cache.k, 0, n * size))  # [Hkv, n·C, D]
            v = k if cache.latent else torch.index_select(cache.v[0], 1, index, out=self._buffer(cache.v, 1, n * size))
        hkv = k.shape[0]
        return k.view(hkv, n, size, k.shape[-1]), v.view(hkv, n, size, v.shape[-1])

    def _buffer(self, pool: Tensor, which: int, tokens: int) -> Tensor:
        hkv, d = pool.shape[1], pool.shape[-1]
        if self.buffers[which] is None:  # once per plan: room for one gather
            most = self.group * GATHER_CHUNK
            self.buffers[which] = torch.empty(hkv * most * d, dtype=pool.dtype, device=pool.device)
        buffer = self.buffers[which]
        assert buffer is not None
        return buffer[: hkv * tokens * d].view(hkv, tokens, d)

    def attend(
        self, qg: Tensor, cache: KVCache, scale: float, upcast: bool, sink: Tensor | None = None, path: str = "batched"
    ) -> Tensor:
        """``[Hkv, R, D]``: the rows ``qg`` ``[Hkv, R, D]`` against every segment; ``sink`` ``[Hkv, R]``
        (learned sink logits) joins the combination as a partial with no value; ``path``: one of
        :data:`PATHS`."""
        partials = []
        for segment in self.segments:
            for keys, bias, dead in segment.parts:
                n = bias.shape[0] if bias is not None else (keys.stop - keys.start) // segment.chunk or 1
                size = (keys.stop - keys.start) // n
                step = n if segment.index is None else self.group  # chunks per product
                for lo in range(0, n, step):
                    m = min(step, n - lo)
                    kc, vc = self.chunks(cache, segment, keys.start + lo * size, m, size)  # [Hkv, m, C, D]
                    part = bias[lo : lo + m] if bias is not None else None
                    o, lse = attend_chunks(qg, kc, vc, scale, part, upcast, path)
                    if dead is not None and path == "fused":  # rows that see nothing in a chunk weigh nothing
                        lse = lse.masked_fill(dead[lo : lo + m][None], float("-inf"))  # [Hkv, m, R]
                    partials.append((o, lse))
        if sink is not None:  # the sink's share of each row's denominator, carrying nothing
            hkv, r, dv = *qg.shape[:2], partials[0][0].shape[-1]
            partials.append((torch.zeros(hkv, 1, r, dv, device=qg.device), sink[:, None]))
        return combine(partials)  # [Hkv, G·S, Dv]


def rows_of(problem: Problem, cache: KVCache, b: int) -> Rows:
    """Sequence ``b``'s grouped rows: its new tokens at the end of its attended ones, and with
    ALiBi each row's head's slope."""
    g, s = problem.heads // problem.kv_heads, problem.seq_len
    at = float(cache.attended[b]) - s + torch.arange(s, dtype=torch.float64)  # [S]
    slopes = None
    if problem.bias == "alibi":
        slopes = alibi_slopes(problem.heads).view(problem.kv_heads, g).repeat_interleave(s, 1)  # [Hkv, G·S]
    where = cache.lengths.device
    return Rows(g, at.repeat(g).to(where), None if slopes is None else slopes.to(where))


def _bias(hidden: Tensor, alibi: Tensor | None, n: int) -> tuple[Tensor | None, Tensor | None]:
    """For ``n`` chunks of ``hidden`` ``[R, n·C]`` (True where a pair is masked) and ``alibi``
    ``[Hkv, R, n·C]``: the additive bias the kernel takes, ``[n, 1 or Hkv, R, C]`` float32 (None when
    it would add nothing), and the rows a chunk hides entirely ``[n, R]`` (None when none). The bias
    is a view of ``[1 or Hkv, R, n·C]`` storage, the products' layout, so that they add it to a
    whole stretch's scores without a copy in the step (the fused kernel reads it by its strides)."""
    r = hidden.shape[0]
    hidden = hidden.reshape(r, n, -1).transpose(0, 1)  # [n, R, C]
    bias = None
    if alibi is not None:
        bias = alibi.reshape(alibi.shape[0], r, n, -1).permute(2, 0, 1, 3)  # [n, Hkv, R, C]
    elif bool(hidden.any()):
        bias = torch.zeros(hidden[:, None].shape, device=hidden.device)  # [n, 1, R, C]
    if bias is not None:
        bias = bias.masked_fill(hidden[:, None], float("-inf")).permute(1, 2, 0, 3).contiguous().permute(2, 0, 1, 3)
    dead = hidden.all(dim=-1)
    return bias, (dead if bool(dead.any()) else None)


@register("split_kv")
class SplitKV(Implementation):
    description = "Split-KV decoder (flash-decoding): grouped heads, cache chunks in parallel, LSE combine"
    exact = True
    computes = ("full", "causal", "window")
    devices = ("cpu", "cuda")
    dtypes = ("float32", "bfloat16", "float16")
    features = frozenset({"causal", "window", "gqa", "cross", "decode", "alibi", "sinks", "v_head_dim", "latent"})
    requires = frozenset({"decode"})  # a decoder: decode steps against a KV cache only
    growth = Growth(1.0, 1.0)  # per step: linear in the cached tokens

    def supports(self, problem: Problem) -> str | None:
        if problem.softcap:
            return "softcap: the fused flash kernel that computes each chunk has no hook on the scores"
        return super().supports(problem)

    def prepare_decode(self, problem: Problem, cache: KVCache) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """Each sequence's chunks and masks, once, outside the timing."""
        g = problem.heads // problem.kv_heads
        lo, hi = cache.ranges(problem.pattern)  # [B, S] each
        plans = [SequencePlan(cache, b, lo[b], hi[b], CHUNK, rows_of(problem, cache, b)) for b in range(cache.batch)]
        sink = case_sinks(problem)  # [H] or None
        sink = None if sink is None else sink.view(problem.kv_heads, g).repeat_interleave(problem.seq_len, 1)
        scale, hkv, s, d, dv = problem.scale, problem.kv_heads, problem.seq_len, problem.head_dim, problem.dv
        low = problem.torch_dtype in (torch.bfloat16, torch.float16)
        cpu = torch.device(problem.device).type == "cpu"
        upcast = low and cpu and not low_precision_matmul_is_fast()
        one_size = problem.latent or dv == d  # the fused kernel wants one head size (a latent is passed as both)
        paths = [path for path in PATHS if path != "fused" or one_size] if cpu else ["batched"]  # timed on the CPU only
        if upcast and "fused" in paths:
            # No bfloat16 matrix units: the products would first copy the whole stretch to float32
            # (twice the cache's bytes); the fused kernel converts a block at a time.
            paths = ["fused"]
        trial = torch.zeros(hkv, g * s, d, dtype=problem.torch_dtype, device=problem.device)  # [Hkv, G·S, D]
        chosen: dict[tuple[tuple[int, bool], ...], str] = {}
        for plan in plans:  # each sequence's own trial (its length and layout decide), shared by alike ones
            layout = tuple((segment.length, segment.index is None) for segment in plan.segments)
            if layout not in chosen:

                def attend(path: str, plan: SequencePlan = plan) -> Tensor:
                    return plan.attend(trial, cache, scale, upcast, sink, path)

                chosen[layout] = fastest(paths, attend)
            plan.path = chosen[layout]

        def step(q: Tensor, k_new: Tensor, v_new: Tensor) -> Tensor:
            cache.append(k_new, v_new)
            out = q.new_empty(*q.shape[:3], dv)  # [B, H, S, Dv]
            for plan in plans:
                qg = q[plan.b].reshape(hkv, g * s, d)  # [Hkv, G·S, D]: head hkv·G + g, row g·S + s
                o = plan.attend(qg, cache, scale, upcast, sink, plan.path)  # [Hkv, G·S, D]
                o = o[..., :dv]  # [Hkv, G·S, Dv]: a latent's value columns
                out[plan.b] = o.reshape(q.shape[1], s, dv)
            return out

        return step

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        raise NotImplementedError("split_kv runs decode steps only (prepare_decode)")
