"""ALiBi on the tiles of a plan: each piece's bias as one small additive mask, and a shift of its log-sum-exp.

ALiBi (:mod:`attnbench.case.variants`) adds ``−slope_h · |p − j|`` to the score of a query at
key position ``p`` and key ``j``. The fused tile kernel takes an additive float mask, so the
bias must reach it as one; materialised whole it is ``H · Nq · Nk`` floats, the quadratic
memory the tiles exist to avoid. Tile ``i`` of a piece holds query rows ``r_i + a`` (at positions
``r_i + a + Nk − Nq``) and keys ``c_i + b``, so within it

    p − j = δ_i + a − b,        δ_i = r_i + (Nk − Nq) − c_i

and each piece is one of three kinds:

* **Keys wholly before the rows** (``p − j ≥ 0`` for every pair: ``δ_i ≥ lk − 1``; every
  tile left of the causal diagonal, a window's far edge, StreamingLLM's first tokens):
  ``−slope·(δ_i + a − b) = −slope·(lk − 1 − b) − slope·(δ_i + a − lk + 1)``. The first term
  depends on the key alone: one ``[H, lk]`` mask, shared by every row and tile. The second is
  a constant per row, which moves no probability, only the row's log-sum-exp: the kernel's
  log-sum-exp is the true one plus ``shift = slope·(δ_i + a − lk + 1)``, subtracted before
  the pieces merge and added back for the kernel's backward, which recomputes the
  probabilities from it. The key mask is 0 at the tile's last key, the one nearest every row,
  so the scores that carry the weight are not rounded against a large bias.
* **Keys wholly after the rows** (``p − j ≤ 0``: ``δ_i + lq − 1 ≤ 0``): the mirror image, key
  mask ``−slope·b`` and ``shift = −slope·(a + δ_i)``.
* **Tiles the diagonal crosses** (a causal diagonal tile, a window's band): the bias itself,
  ``[H, lq, lk]`` — one for all tiles of the piece, since tiles are batched by their position
  relative to their diagonal and so share ``δ``.

Masks are float32 (the kernel adds them in float32 whatever the inputs' dtype) and carry the
piece's ``−inf`` for hidden pairs where it has a ``keep`` mask. The heads of a mask are the
query heads, so a call covers one batch element (:mod:`~attnbench.implementations._tiles` runs
the plan once per element) rather than repeating the mask ``B`` times.

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from attnbench.case.variants import alibi_slopes
from attnbench.implementations._plan import Piece, Plan, tiles_as_heads

Tensor = torch.Tensor

#: The most float32 elements a piece's crossing-tile bias may hold (64 MiB), and what
#: :func:`too_large` holds a case's non-causal full-width tile to.
CROSSING_LIMIT = 1 << 24


@dataclass(frozen=True)
class PieceBias:
    """A piece's additive mask in its kernel layout (``[H, n|1, lq|1, lk]`` by head, else
    ``[n|1, H, lq|1, lk]``, float32) and ``shift`` (kernel lse − true lse, ``[H, n, lq]`` or
    ``[n, H, lq]``; None when the mask is the bias itself)."""

    mask: Tensor
    shift: Tensor | None


def piece_bias(
    p: Piece, slopes: Tensor, offset: int, by_head: bool, ramps: tuple[Tensor, Tensor],
    made: dict[tuple[object, ...], Tensor] | None = None,
) -> PieceBias:  # fmt: skip
    """The ALiBi of one piece for query heads with ``slopes`` ``[H]`` (float64, on the piece's
    device), ``offset = Nk − Nq``, in the layout the piece runs in (``by_head``: tiles are the
    kernel's heads). ``ramps``: ``−slope·(L − 1 − x)`` and ``−slope·x`` for ``x < L = Nk``,
    ``[H, L]`` float32, whose suffixes and prefixes are the key masks (views, shared by every
    piece: the masks of the runs before each block's diagonal would otherwise add up to
    ``H·Nk²/block`` floats). ``made``: masks already built, by what decides them (the parts of
    a split piece share one)."""
    tiles = torch.arange(p.n, device=slopes.device, dtype=torch.float64)
    delta = p.q0 + offset - p.k0 + tiles * (p.q_step - p.k_step)  # [n] δ_i
    a = torch.arange(p.lq, device=slopes.device, dtype=torch.float64)
    s = slopes[:, None, None]  # [H, 1, 1]
    shift: Tensor | None = None
    d = delta[:1] if bool((delta == delta[0]).all()) else delta  # [n|1]: tiles batched share δ
    if bool((delta >= p.lk - 1).all()):  # every key before its rows
        kind: tuple[object, ...] = ("before", p.lk)
        shift = s * (delta[None, :, None] + a - p.lk + 1)  # [H, n, lq]
    elif bool((delta + p.lq - 1 <= 0).all()):  # every key after its rows
        kind = ("after", p.lk)
        shift = -s * (a + delta[None, :, None])  # [H, n, lq]
    else:
        kind = ("crossing", p.lq, p.lk, tuple(d.tolist()))
    key = (*kind, None if p.keep is None else id(p.keep), by_head)
    made = {} if made is None else made
    if key not in made:
        if kind[0] == "before":
            mask = ramps[0][:, None, None, ramps[0].shape[1] - p.lk :]  # [H, 1, 1, lk]: −slope·(lk − 1 − b)
        elif kind[0] == "after":
            mask = ramps[1][:, None, None, : p.lk]  # [H, 1, 1, lk]: −slope·b
        else:
            b = torch.arange(p.lk, device=slopes.device, dtype=torch.float64)
            dist = (d[:, None, None] + a[:, None] - b[None, :]).abs().float()  # [n|1, lq, lk]
            mask = -s.float()[:, None] * dist[None]  # [H, n|1, lq, lk]
        keep = p.bias(torch.float32)  # [n|1, lq, lk]: 0 kept, -inf hidden
        if keep is not None:
            mask = mask + keep[None]  # [H, n|1, lq, lk]
        made[key] = mask if by_head else mask.transpose(0, 1)  # [n|1, H, lq|1, lk] with tiles as batch
    if shift is not None and not by_head:
        shift = shift.transpose(0, 1)  # [n, H, lq]
    return PieceBias(made[key], None if shift is None else shift.float().contiguous())


@dataclass(frozen=True)
class TileBias:
    """ALiBi for every piece of a plan, built once outside the timed call."""

    pieces: tuple[PieceBias, ...]

    @staticmethod
    def build(plan: Plan, heads: int, by_head: bool, device: torch.device | str) -> TileBias:
        """Each piece's :class:`PieceBias` for ``heads`` query heads; ``by_head``: queries and
        keys have the same heads (the layout rule of :mod:`~attnbench.implementations._tiles`)."""
        slopes = alibi_slopes(heads).to(device, torch.float64)  # [H]
        x = torch.arange(plan.nk, device=device, dtype=torch.float64)
        ramps = ((-slopes[:, None] * (plan.nk - 1 - x)).float(), (-slopes[:, None] * x).float())  # [H, Nk] ×2
        offset = plan.nk - plan.nq
        made: dict[tuple[object, ...], Tensor] = {}
        built = (piece_bias(p, slopes, offset, tiles_as_heads(p, by_head), ramps, made) for p in plan.pieces)
        return TileBias(tuple(built))

    def nbytes(self) -> int:
        """The bytes the masks and shifts hold (shared ramps once)."""
        seen: dict[int, int] = {}
        for piece in self.pieces:
            for t in (piece.mask, piece.shift):
                if t is not None:
                    storage = t.untyped_storage()
                    seen[storage.data_ptr()] = storage.nbytes()
        return sum(seen.values())


def for_case(plan: Plan, problem: Any) -> TileBias | None:
    """The plan's ALiBi for ``problem`` (a :class:`~attnbench.case.problem.Problem`), or None
    when the case has none."""
    if problem.bias != "alibi":
        return None
    return TileBias.build(plan, problem.heads, problem.heads == problem.kv_heads, problem.device)


def too_large(heads: int, nq: int, nk: int, causal: bool, window: int) -> str | None:
    """Why ALiBi cannot be planned for the tiles of a case, or None. Under causal masking the
    crossing tiles are the ``block × block`` diagonals (the window's interior band for
    ``sliding_window``); without it each block's keys are one tile the diagonal crosses (all of
    them without a window, ``~2W`` of them with one), whose biases add up to as much as the whole
    ``[H, Nq, Nk]`` mask: allowed while that fits :data:`CROSSING_LIMIT`."""
    if causal or heads * nq * nk <= CROSSING_LIMIT:
        return None
    mib = 4 * heads * nq * nk / 2**20
    reach = "the full-width tile crosses" if not window else f"each block's keys within {window} cross"
    return (
        f"alibi without causal masking: {reach} the diagonal, where |p − j| turns, so the crossing tiles'"
        f" biases grow to the [H, Nq, Nk] float32 mask ({mib:.0f} MiB here), more than the"
        f" {4 * CROSSING_LIMIT / 2**20:.0f} MiB they may hold"
    )


def score_variant_reason(problem: Any, gathers: bool = False) -> str | None:
    """Why the tiles cannot compute a case's soft-cap or ALiBi (``problem`` a
    :class:`~attnbench.case.problem.Problem`), with the figure that decides it, or None. The fused
    kernel that computes each tile (PyTorch's CPU flash kernel) takes the scale, a causal flag and
    an additive mask, nothing else: a soft-cap has no hook inside it. ALiBi reaches it as one small
    mask per piece (this module) where the piece's keys are a
    strided range; ``gathers``: the implementation gathers its tiles' keys by index."""
    if problem.softcap:
        return (
            "softcap: the fused tile kernel (PyTorch's CPU flash kernel) has no hook on the scores; a soft-cap"
            " would need each tile's scores materialised and the fused kernel given up"
        )
    if problem.bias == "alibi" and gathers:
        return (
            "alibi: the tiles gather their key blocks by index, so a tile's distances p − j are not one offset"
            " per piece and its bias would be a mask per tile"
        )
    if problem.bias == "alibi":
        pattern = problem.pattern
        return too_large(problem.heads, problem.seq_len, problem.kv_len, pattern.causal, pattern.window)
    return None
