"""Chunked attention: FlashAttention's online softmax, written in plain PyTorch.

The algorithm
-------------
Softmax attention for one query row ``q`` is ``o = Σ_j e^{s_j} v_j / Σ_j e^{s_j}`` with
``s_j = q·k_j · scale``. Both sums can be accumulated over the keys in blocks, as long as every
partial sum is expressed relative to the same running maximum (for numerical safety). After the
key blocks ``1..t`` a row keeps three numbers-per-row quantities:

    m  running maximum of its scores                       [rows, 1]
    l  Σ e^{s_j - m}                                        [rows, 1]
    a  Σ e^{s_j - m} v_j   (unnormalized output)            [rows, D]

and a new key block with scores ``S`` updates them as (Milakov & Gimelshein 2018; Dao et al.
2022, "FlashAttention")

    m' = max(m, rowmax(S))
    P  = exp(S - m')                 the block's probabilities, unnormalized
    α  = exp(m - m')                 rescales what was accumulated so far
    l' = α·l + rowsum(P)
    a' = α·a + P V_block

and at the end ``o = a / l``. The queries are processed in blocks of ``block_q`` rows, each
against the key blocks of ``block_k`` keys, so the largest intermediate is one
``[block_q, block_k]`` tile per head: the ``Nq × Nk`` score matrix never exists.

Patterns
--------
Causal, sliding-window and block-sparse patterns (:mod:`attnbench.patterns`) are applied per tile.
Before any data is seen, :meth:`Chunked.prepare` walks the tiles once: a tile whose every pair
is masked is **skipped** (never computed); a tile whose every pair is kept runs unmasked; only
the tiles that straddle a boundary (the causal diagonal, the edge of a window band, a block of a
layout finer than the tile) carry a ``[block_q, block_k]`` boolean mask. The key range of a query
block comes from ``pattern.row_ranges`` and the layout's block table, so causal attention does
about half the work of full attention and a window of width ``W`` about ``N·(W + block)``.
A row that sees no key keeps ``l = 0`` and outputs zeros.

Cost
----
Time ``O(Nq·Nk·D)`` for full attention (the same products as naive attention, in tiles), less
for the skipped tiles of a pattern. Extra memory, linear in ``N``: one ``block_q × block_k``
score tile per head at a time, the ``[rows, D]`` accumulators of one query block, the output
blocks (``O(N·D)``), and the masks of boundary tiles (built once in ``prepare``; ``O(N·block)``
under causal). Low-precision inputs keep their dtype in the matrix products and float32 for
``m``, ``l``, ``a`` and the probabilities. Gradients flow through autograd, which stores every
probability tile for the backward pass (so training memory is ``O(N²)``; a FlashAttention
backward would recompute the tiles instead); under autograd low-precision inputs are computed in
float32, so that the gradients summed over tiles do not round to bfloat16 at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnbench import Growth, Implementation, Problem, register
from attnbench.contract import AttentionFn
from attnbench.patterns import Pattern

Tensor = torch.Tensor


@dataclass(frozen=True)
class Tile:
    """Keys ``[k0, k1)`` for one query block; ``hidden`` is True where a pair is masked
    (``[bq, bk]`` bool), or None when the whole tile is computed."""

    k0: int
    k1: int
    hidden: Tensor | None


@dataclass(frozen=True)
class QueryBlock:
    """Queries ``[q0, q1)`` and the key tiles they must visit, in key order."""

    q0: int
    q1: int
    tiles: tuple[Tile, ...]


def plan_tiles(
    pattern: Pattern, nq: int, nk: int, block_q: int, block_k: int, device: str | torch.device = "cpu"
) -> list[QueryBlock]:
    """Which key tiles each query block visits, and which of them need a mask."""
    lo, hi = pattern.row_ranges(nq, nk)  # [Nq] each: the key range of every row
    layout = pattern.layout
    table = layout.table(nq, nk) if layout is not None else None  # [rows, nkb] bool, by position block
    plan = []
    for q0 in range(0, nq, block_q):
        q1 = min(nq, q0 + block_q)
        rows = torch.arange(q0, q1)  # [bq]
        row_lo, row_hi = lo[q0:q1, None], hi[q0:q1, None]  # [bq, 1]
        first, last = int(row_lo.min()), int(row_hi.max())  # keys any row of the block may see
        tiles = []
        for k0 in range(first, last, block_k):
            k1 = min(last, k0 + block_k)
            if table is not None and layout is not None:
                b = layout.block
                r0, r1 = (int(r) for r in layout.row_blocks(nq, nk, torch.tensor([q0, q1 - 1])))
                if not table[r0 : r1 + 1, k0 // b : (k1 - 1) // b + 1].any():
                    continue  # no kept layout block meets this tile
            if table is None and k0 >= int(row_lo.max()) and k1 <= int(row_hi.min()):
                tiles.append(Tile(k0, k1, None))  # inside every row's range: no mask to build
                continue
            cols = torch.arange(k0, k1)  # [bk]
            keep = (cols >= row_lo) & (cols < row_hi)  # [bq, bk]
            if table is not None and layout is not None:
                keep &= table[layout.row_blocks(nq, nk, rows)][:, cols // layout.block]
            if not keep.any():
                continue  # fully masked: skipped
            tiles.append(Tile(k0, k1, None if keep.all() else (~keep).to(device)))
        plan.append(QueryBlock(q0, q1, tuple(tiles)))
    return plan


def tile_scores(qb: Tensor, kt: Tensor, scale: float, scratch: Tensor | None) -> Tensor:
    """``qb ktᵀ`` as float32 ``[BH, rows, bk]``: written into the flat float32 ``scratch`` when
    given (no allocation per tile), and scaled here unless ``qb`` is float32 (already scaled)."""
    shape = (qb.shape[0], qb.shape[1], kt.shape[1])
    if scratch is None:
        s = torch.bmm(qb, kt.transpose(1, 2))
        return s if s.dtype == torch.float32 else s.float().mul_(scale)
    s = scratch[: shape[0] * shape[1] * shape[2]].view(shape)
    if qb.dtype == torch.float32:
        return torch.bmm(qb, kt.transpose(1, 2), out=s)
    return s.copy_(torch.bmm(qb, kt.transpose(1, 2))).mul_(scale)


def attend_block(
    qb: Tensor, k: Tensor, v: Tensor, tiles: tuple[Tile, ...], scale: float, groups: int, scratch: Tensor | None
) -> Tensor:
    """One query block against its key tiles with the online softmax.

    ``qb`` is ``[BH, G·bq, D]`` (already multiplied by ``scale`` when float32), ``k``/``v`` are
    ``[BH, Nk, D]``; returns ``[BH, G·bq, D]`` float32. ``scratch`` (None under autograd, which
    keeps every tile) holds the scores of one tile.
    """
    bh, rows, d = qb.shape
    if not tiles:
        return qb.new_zeros(bh, rows, d, dtype=torch.float32)
    m = acc = total = None
    for tile in tiles:
        kt, vt = k[:, tile.k0 : tile.k1], v[:, tile.k0 : tile.k1]  # [BH, bk, D] views
        s = tile_scores(qb, kt, scale, scratch)  # [BH, G·bq, bk] float32
        if tile.hidden is not None:
            s.view(bh, groups, -1, s.shape[-1]).masked_fill_(tile.hidden, float("-inf"))  # [BH, G, bq, bk]
        tile_max = s.detach().amax(dim=-1, keepdim=True)  # [BH, G·bq, 1]
        m_new = tile_max if m is None else torch.maximum(m, tile_max)
        m_safe = torch.nan_to_num(m_new, neginf=0.0)  # rows with nothing seen yet: any finite shift
        p = s.sub_(m_safe).exp_()  # [BH, G·bq, bk] unnormalized probabilities
        pv = torch.bmm(p.to(vt.dtype), vt).float()  # [BH, G·bq, D]
        row_sum = p.sum(dim=-1, keepdim=True)  # [BH, G·bq, 1]
        if acc is None or total is None or m is None:
            acc, total = pv, row_sum
        else:
            alpha = torch.exp(m - m_safe)  # [BH, G·bq, 1] rescale of the earlier blocks
            acc = acc.mul_(alpha).add_(pv)
            total = total.mul_(alpha).add_(row_sum)
        m = m_new
    assert acc is not None and total is not None
    return acc / total.masked_fill(total == 0, 1.0)  # rows that saw no key: 0 / 1


def chunked_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, plan: list[QueryBlock]) -> Tensor:
    """``q`` ``[B, H, Nq, D]``, ``k``/``v`` ``[B, Hkv, Nk, D]`` → ``[B, H, Nq, D]``."""
    b, h, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = h // hkv
    dtype = q.dtype
    if dtype != torch.float32 and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        q, k, v = q.float(), k.float(), v.float()  # autograd: gradients summed over tiles in float32
    if q.dtype == torch.float32:
        q = q * scale  # fold the scale into q once: cheaper than scaling every tile
    q5 = q.reshape(b, hkv, g, nq, d)  # [B, Hkv, G, Nq, D]
    k3 = k.reshape(b * hkv, nk, d)  # [BH, Nk, D]   (BH = B·Hkv)
    v3 = v.reshape(b * hkv, nk, d)  # [BH, Nk, D]
    scratch = None
    if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        rows = max(block.q1 - block.q0 for block in plan)
        width = max((tile.k1 - tile.k0 for block in plan for tile in block.tiles), default=0)
        scratch = q.new_empty(b * hkv * g * rows * width, dtype=torch.float32)  # one tile's scores
    outs = []
    for block in plan:
        bq = block.q1 - block.q0
        qb = q5[:, :, :, block.q0 : block.q1].reshape(b * hkv, g * bq, d)  # [BH, G·bq, D]
        ob = attend_block(qb, k3, v3, block.tiles, scale, g, scratch)  # [BH, G·bq, D] float32
        outs.append(ob.to(dtype).view(b, hkv, g, bq, d))  # [B, Hkv, G, bq, D]
    return torch.cat(outs, dim=3).view(b, h, nq, d)  # [B, H, Nq, D]


@register("chunked")
class Chunked(Implementation):
    description = "FlashAttention's online softmax over query and key blocks in PyTorch; skips masked tiles"
    exact = True
    computes = ("full", "causal", "window", "block-sparse")
    devices = ("cpu", "cuda")
    dtypes = ("float32", "bfloat16", "float16")
    features = frozenset({"causal", "window", "layout", "gqa", "cross", "backward"})
    growth = Growth(2.0, 1.0)
    #: Query rows per block and keys per tile (the tile is ``block_q × block_k`` per head).
    block_q: int = 256
    block_k: int = 512

    def prepare(self, problem: Problem) -> AttentionFn:
        """Plan the tiles (skips and boundary masks) once, outside the timed call."""
        plan = plan_tiles(
            problem.pattern, problem.seq_len, problem.kv_len, self.block_q, self.block_k, device=problem.device
        )
        scale = problem.scale

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return chunked_attention(q, k, v, scale, plan)

        return run

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return self.prepare(problem)(q, k, v)
