"""Sliding-window (local) attention that computes only the band around the diagonal.

The pattern
-----------
With a window ``W`` (:mod:`attnbench.case.patterns`), query ``i`` sits at key position
``p = i + Nk - Nq`` (bottom-right alignment) and attends key ``j`` when ``|p - j| < W``; with
``causal`` also ``j <= p``. So a row sees at most ``W`` keys (causal: ``p-W+1 .. p``) or
``2W - 1`` keys (non-causal: ``p-W+1 .. p+W-1``), however long the sequence is. A dense score
matrix with a band mask would still cost ``Nq·Nk``; here only the band is computed.

The algorithm
-------------
Cut the *interior* queries — those whose whole window lies inside the keys — into tiles of ``T``
consecutive rows. Tile ``t`` sees one contiguous *span* of ``S = T + W - 1`` keys (causal) or
``S = T + 2W - 2`` (non-causal), and consecutive spans start ``T`` keys apart, so the spans of
all tiles are one overlapping strided view of ``K`` (and of ``V``): nothing is copied.

    Q tiles   [B·H, nt, T, D]      a view of q (strides N·D, T·D, D, 1)
    K spans   [B·H, nt, S, D]      a view of k (strides N·D, T·D, D, 1): overlapping rows
    out       [B·H, nt, T, D]      = softmax(Q Kᵀ·scale + band) V, one fused kernel call

Within a span, query row ``r`` of the tile and span column ``c`` are at distance
``p - j = r + W - 1 - c`` whatever the tile, so the band is one ``[T, S]`` mask shared by every
tile (built once in :meth:`SlidingWindow.prepare`, read from cache). The call is PyTorch's fused
CPU FlashAttention kernel (the kernel behind SDPA; on other devices the same tiles run as
``torch.matmul`` products, :mod:`~attnbench.implementations._tiles`). The rows near the ends,
whose windows are cut off by the first or last key — under causal attention the first ``W - 1``
rows, which see keys ``0 .. p``: a top-left causal tile — are planned like
:mod:`~attnbench.implementations.chunked` does, and every row is computed exactly once. Rows with
no key in range (causal cross attention with ``Nq > Nk``) output zeros. With grouped-query
attention (``Hkv < H``) the tiles become the kernel's batch and the heads its heads.

Cost
----
Time: every interior row computes ``S`` scores for its ``W`` (causal) or ``2W - 1`` pairs, an
overhead of ``(T - 1)/W`` — 12% for ``T = 32``, ``W = 256``: linear in ``N`` for a fixed window.
The kernel's throughput per pair hardly depends on the tile's shape (~the same GFLOP/s as SDPA's
dense ``256 × 512`` blocks, measured at 1 and 2 threads), so against causal SDPA, which computes
``≈ N²/2 + 256·N`` pairs, the speed-up is about ``(N/2 + 256)/(W + T - 1)``: 8× at N = 4K and
30× at 16K for ``W = 256``. On top: the copy of the tiles' output into the result
(``O(N·D)``, one pass) and a few small calls for the rows at the ends. Extra memory: the output
and log-sum-exp (``O(N·D)``), the kernel's per-thread buffers and one ``[T, S]`` mask —
linear in ``N``. The backward pass recomputes the tiles with the kernel's backward from the saved
output and log-sum-exp (``O(N·D)`` memory), summing the gradients of the overlapping key spans.

ALiBi (``bias = "alibi"``): within a span ``p − j`` depends on the row and column alone, so the
band's bias is one ``[H, T, S]`` mask beside the band's
(:mod:`~attnbench.implementations._tile_bias`).

Low precision: bfloat16/float16 run in their own dtype (products with float32 accumulation)
where the CPU has matrix units for them, and are otherwise converted to float32 once (there a
bfloat16 product is ~100× slower than a float32 one).

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

import torch

from attnbench import Growth, Implementation, Problem, register
from attnbench.case.patterns import Pattern
from attnbench.case.variants import case_sinks
from attnbench.implementations import _dispatch, _pattern_plan, _plan, _tile_bias, _tiles
from attnbench.plugins.contract import AttentionFn

Tensor = torch.Tensor


def band_keep(window: int, causal: bool, tile: int) -> Tensor:
    """``[T, S]`` bool, True where query ``r`` of a tile sees column ``c`` of its span:
    ``p - j = r + W - 1 - c`` lies in ``[0, W)`` (causal) or ``(-W, W)``."""
    span = tile + window - 1 if causal else tile + 2 * window - 2
    dist = torch.arange(tile)[:, None] + window - 1 - torch.arange(span)[None, :]  # [T, S] = p - j
    band = (dist >= 0) if causal else (dist > -window)
    return band & (dist < window)


def plan_window(
    pattern: Pattern,
    nq: int,
    nk: int,
    tile: int,
    edge_block: int,
    device: torch.device | str = "cpu",
    max_rows: int | None = None,
    stairs: bool = True,
) -> _plan.Plan:
    """One piece for the interior tiles (a shared band mask, strided views) and chunked-style
    pieces for the rows whose window the ends of the keys cut off (``stairs``: as
    :func:`~attnbench.implementations._pattern_plan.pattern_pieces`)."""
    window, causal, offset = pattern.window, pattern.causal, nk - nq
    first = min(nq, max(0, window - 1 - offset))  # first row whose window starts at a key >= 0
    last = nq if causal else max(first, min(nq, nk - window - offset + 1))  # rows whose window ends inside
    tiles = (last - first) // tile
    pieces: list[_plan.Piece] = []
    if tiles > 0:
        span = tile + window - 1 if causal else tile + 2 * window - 2
        keep = band_keep(window, causal, tile)[None].to(device)  # [1, T, S]
        k0 = first + offset - window + 1  # the first interior row's first key
        pieces.append(_plan.Piece(tiles, first, tile, tile, k0, tile, span, keep=keep))
    end = first + tiles * tile
    for rows in ((0, first), (end, nq)):
        if rows[1] > rows[0]:
            pieces += _pattern_plan.pattern_pieces(pattern, nq, nk, edge_block, edge_block, device, rows, stairs)
    return _plan.make_plan(nq, nk, pieces, max_rows)


@register("sliding_window")
class SlidingWindow(Implementation):
    description = "Local attention computing only the tiles of keys that meet the window band: O(N·W)"
    exact = True
    computes = ("window",)
    devices = ("cpu", "cuda")
    dtypes = ("float32", "bfloat16", "float16")
    features = frozenset({"causal", "window", "gqa", "cross", "backward", "sinks", "alibi"})
    growth = Growth(1.0, 1.0)
    #: Query rows per tile (the span of a tile is ``tile + W - 1`` keys, causal).
    tile: int = 32
    #: Query rows per block for the rows at the ends (planned as chunked does).
    edge_block: int = 256
    #: ``"fused"`` (PyTorch's CPU FlashAttention kernel) or ``"matmul"``; None: fused on the CPU.
    backend: str | None = None
    #: bfloat16/float16 products in their own dtype (True) or in float32 (False); None: by capability.
    low_precision: bool | None = None
    #: Query rows per kernel call at most (None: outputs under ``_plan.CALL_BYTES``).
    call_rows: int | None = None

    def supports(self, problem: Problem) -> str | None:
        if problem.window <= 0:
            return "needs a sliding window (window > 0); without one the band is the whole matrix"
        return _tile_bias.score_variant_reason(problem) or super().supports(problem)

    def prepare(self, problem: Problem) -> AttentionFn:
        """Plan the tiles and build the band mask once, outside the timed call."""
        rows = self.call_rows or _plan.rows_per_call(problem.batch, problem.heads, problem.head_dim)
        plan = plan_window(
            problem.pattern, problem.seq_len, problem.kv_len, self.tile, self.edge_block, problem.device, rows,
            stairs=problem.bias != "alibi",
        )  # fmt: skip
        backend = _dispatch.pick_backend(problem.device, self.backend)
        work = _dispatch.compute_dtype(problem.torch_dtype, problem.device, self.low_precision)
        asked = self.low_precision
        scale = problem.scale
        sink = case_sinks(problem)  # [H], or None
        alibi = _tile_bias.for_case(plan, problem)

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            dtype = _dispatch.under_autograd(work, asked, q, k, v)
            return _tiles.attention(q, k, v, plan, scale, backend, dtype, sink, alibi)  # [B, H, Nq, D]

        return run

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return self.prepare(problem)(q, k, v)
