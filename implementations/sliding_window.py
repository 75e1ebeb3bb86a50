"""Sliding-window (local) attention that computes only the band around the diagonal.

The pattern
-----------
With a window ``W`` (:mod:`attnbench.patterns`), query ``i`` sits at key position
``p = i + Nk - Nq`` (bottom-right alignment) and attends key ``j`` when ``|p - j| < W``; with
``causal`` also ``j <= p``. So a row sees at most ``W`` keys (causal: ``p-W+1 .. p``) or
``2W - 1`` keys (non-causal: ``p-W+1 .. p+W-1``), however long the sequence is. A dense score
matrix with a band mask would still cost ``Nq·Nk``; here only the band is computed.

The algorithm
-------------
Cut the queries into tiles of ``T`` consecutive rows. The keys that tile ``t`` may see form one
contiguous *span* of ``S = T + W - 1`` keys (causal) or ``S = T + 2W - 2`` (non-causal),
starting at key ``t·T + (Nk - Nq) - (W - 1)``: consecutive spans start ``T`` keys apart. After
padding ``K`` and ``V`` with zeros at both ends so that every span lies inside, the spans of all
tiles are one strided view, ``unfold(dim=N, size=S, step=T)``:

    Q tiles   [B·Hkv·nt, G·T, D]      (G = H/Hkv query heads share one key/value head)
    K spans   [B·Hkv·nt, S, D]        (copied, a group of tiles at a time, from that view)
    scores    [B·Hkv·nt, G·T, S] = Q tiles @ K spansᵀ
    out       [B·Hkv·nt, G·T, D] = softmax(scores + mask) @ V spans

Within a span, query row ``r`` of the tile and span column ``c`` are at distance
``p - j = r + W - 1 - c`` whatever the tile, so the band mask is one ``[T, S]`` pattern; the
padding columns at the two ends are masked as well. The masks are built once in
:meth:`SlidingWindow.prepare`. The softmax subtracts each row's maximum (float32 statistics for
low-precision inputs); a row with no key in range (causal cross attention with ``Nq > Nk``)
outputs zeros. Tiles are processed a group at a time so that the scores of one group stay small.

Cost
----
Time ``O(N·(T + W)·D)``: every query row computes ``S`` scores instead of ``Nk`` — linear in the
sequence length for a fixed window, with a constant overhead of ``(T + W - 1)/W`` (causal) over
the ``W`` pairs actually needed. Extra memory: the padded copies of ``Q``, ``K``, ``V`` and the
output (``O(N·D)``), the span copies and scores of the tiles in flight (bounded by
``step_elements``), and ``O(N·S)`` bytes for the masks: linear in ``N``. Gradients flow through
autograd; under autograd low-precision inputs are computed in float32, so that the gradient of
a key summed over the overlapping spans does not round to bfloat16 at every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench import Growth, Implementation, Problem, register
from attnbench.contract import AttentionFn

Tensor = torch.Tensor


def span_geometry(nq: int, nk: int, window: int, causal: bool, tile: int) -> tuple[int, int, int, int]:
    """``(tiles, span, pad_left, pad_right)``: tile ``t``'s span starts at key
    ``t·tile + (nk - nq) - (window - 1)``, i.e. at ``t·tile`` in the padded keys."""
    tiles = -(-nq // tile)
    span = tile + window - 1 if causal else tile + 2 * window - 2
    first = (nk - nq) - (window - 1)  # key index where tile 0's span starts (may be < 0)
    pad_left = -first  # negative: drop keys before the first span
    pad_right = (tiles - 1) * tile + span - (nk + pad_left)
    return tiles, span, pad_left, pad_right


def band_mask(nq: int, nk: int, window: int, causal: bool, tile: int) -> Tensor:
    """``[tiles, T, S]`` bool, True where query ``r`` of tile ``t`` must *not* see span column
    ``c`` (outside the band, or a padding column)."""
    tiles, span, pad_left, _ = span_geometry(nq, nk, window, causal, tile)
    r = torch.arange(tile)[:, None]  # [T, 1]
    c = torch.arange(span)[None, :]  # [1, S]
    dist = r + window - 1 - c  # [T, S] = p - j
    band = (dist >= 0) if causal else (dist > -window)
    band &= dist < window
    j = torch.arange(tiles)[:, None] * tile + torch.arange(span)[None, :] - pad_left  # [tiles, S] key index
    real = (j >= 0) & (j < nk)  # [tiles, S]
    return ~(band[None] & real[:, None, :])  # [tiles, T, S]


def _pad_seq(x: Tensor, left: int, right: int) -> Tensor:
    """Pad (or crop, for negative amounts) dimension 2 of ``[B, H, N, D]``."""
    return F.pad(x, (0, 0, left, right))


def sliding_window_attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, window: int, causal: bool, tile: int, hidden: Tensor, group: int
) -> Tensor:
    """``q`` ``[B, H, Nq, D]``, ``k``/``v`` ``[B, Hkv, Nk, D]`` → ``[B, H, Nq, D]``; ``hidden`` is
    :func:`band_mask`; ``group`` tiles are computed per step."""
    b, h, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = h // hkv
    tiles, span, pad_left, pad_right = span_geometry(nq, nk, window, causal, tile)
    dtype = q.dtype
    if dtype != torch.float32 and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        q, k, v = q.float(), k.float(), v.float()  # autograd: gradients summed over tiles in float32
    if q.dtype == torch.float32:
        q = q * scale  # fold the scale into q once
    qp = _pad_seq(q, 0, tiles * tile - nq)  # [B, H, nt·T, D]
    qt = qp.reshape(b, hkv, g, tiles, tile, d).transpose(2, 3)  # [B, Hkv, nt, G, T, D]
    k_spans = _pad_seq(k, pad_left, pad_right).unfold(2, span, tile)  # [B, Hkv, nt, D, S] view
    v_spans = _pad_seq(v, pad_left, pad_right).unfold(2, span, tile)  # [B, Hkv, nt, D, S] view
    outs = []
    for t0 in range(0, tiles, group):
        t1 = min(tiles, t0 + group)
        n = t1 - t0
        qs = qt[:, :, t0:t1].reshape(b * hkv * n, g * tile, d)  # [BHn, G·T, D]
        ks = k_spans[:, :, t0:t1].transpose(-1, -2).reshape(b * hkv * n, span, d)  # [BHn, S, D] copy
        vs = v_spans[:, :, t0:t1].transpose(-1, -2).reshape(b * hkv * n, span, d)  # [BHn, S, D] copy
        s = torch.bmm(qs, ks.transpose(1, 2))  # [BHn, G·T, S]
        if s.dtype != torch.float32:
            s = s.float().mul_(scale)
        s.view(b * hkv, n, g, tile, span).masked_fill_(hidden[t0:t1, None], float("-inf"))
        row_max = torch.nan_to_num(s.detach().amax(dim=-1, keepdim=True), neginf=0.0)  # [BHn, G·T, 1]
        p = s.sub_(row_max).exp_()  # [BHn, G·T, S]
        total = p.sum(dim=-1, keepdim=True)  # [BHn, G·T, 1]
        o = torch.bmm(p.to(vs.dtype), vs).float() / total.masked_fill(total == 0, 1.0)  # [BHn, G·T, D]
        outs.append(o.to(dtype).view(b, hkv, n, g, tile, d))
    out = torch.cat(outs, dim=2).transpose(2, 3)  # [B, Hkv, G, nt, T, D]
    return out.reshape(b, h, tiles * tile, d)[:, :, :nq]  # [B, H, Nq, D]


@register("sliding_window")
class SlidingWindow(Implementation):
    description = "Local attention computing only the tiles of keys that meet the window band: O(N·W)"
    exact = True
    computes = ("window",)
    devices = ("cpu", "cuda")
    dtypes = ("float32", "bfloat16", "float16")
    features = frozenset({"causal", "window", "gqa", "cross", "backward"})
    growth = Growth(1.0, 1.0)
    #: Query rows per tile (fewer for short queries).
    tile: int = 64
    #: Score elements computed per step (bounds the working set; tiles per step follow from it).
    step_elements: int = 1 << 20

    def supports(self, problem: Problem) -> str | None:
        if problem.window <= 0:
            return "needs a sliding window (window > 0); without one the band is the whole matrix"
        return super().supports(problem)

    def prepare(self, problem: Problem) -> AttentionFn:
        """Build the band masks once, outside the timed call."""
        nq, nk, window, causal = problem.seq_len, problem.kv_len, problem.window, problem.causal
        tile = min(self.tile, nq)
        hidden = band_mask(nq, nk, window, causal, tile).to(problem.device)  # [nt, T, S]
        _, span, _, _ = span_geometry(nq, nk, window, causal, tile)
        per_tile = problem.batch * problem.heads * tile * span
        group = max(1, self.step_elements // per_tile)
        scale = problem.scale

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return sliding_window_attention(q, k, v, scale, window, causal, tile, hidden, group)

        return run

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return self.prepare(problem)(q, k, v)
