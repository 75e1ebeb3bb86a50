"""The plan of a pattern: a case's mask or window cut into the pieces of
:mod:`~attnbench.implementations._plan`, tiles classified once (skipped, whole, top-left causal, or
masked), runs of equal tiles batched, staircases of a causal band joined.

It registers no implementation of its own.

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

import itertools

import torch

from attnbench.case.patterns import Pattern
from attnbench.implementations._plan import (
    Piece,
    Plan,
    Tile,
    group_tiles,
    make_plan,
    top_left_causal,
)

Tensor = torch.Tensor


def plan_pattern(
    pattern: Pattern,
    nq: int,
    nk: int,
    block_q: int,
    block_k: int,
    device: torch.device | str = "cpu",
    max_rows: int | None = None,
    stairs: bool = True,
) -> Plan:
    """See :func:`pattern_pieces`; the plan of all query rows."""
    return make_plan(nq, nk, pattern_pieces(pattern, nq, nk, block_q, block_k, device, stairs=stairs), max_rows)


def pattern_pieces(
    pattern: Pattern,
    nq: int,
    nk: int,
    block_q: int,
    block_k: int,
    device: torch.device | str = "cpu",
    rows: tuple[int, int] | None = None,
    stairs: bool = True,
) -> list[Piece]:
    """Tiles for any pattern, aligned to each query block's diagonal.

    Query block ``[q0, q0 + block_q)`` has its first row at key position ``d0 = q0 + Nk - Nq``;
    its key tiles are ``[d0, d0 + block_q)`` (the *diagonal* tile: top-left causal under a causal
    pattern) and tiles of ``block_k`` keys on either side, clipped to the keys the block's rows may
    see (``pattern.row_ranges``). A tile whose pairs are all masked is skipped and consecutive full
    tiles of a block are joined. Consecutive blocks that see a common run of keys and then their
    causal diagonal form a staircase, computed as one causal tile (:func:`_staircases`); the
    other tiles of all blocks are batched by :func:`group_tiles` (same relative position, same
    mask: one piece). ``rows``: plan only the query rows ``[r0, r1)`` (blocks start at ``r0``).
    Without ``stairs`` every causal diagonal stays its own ``block_q × block_q`` tile (ALiBi's
    bias on a tile the diagonal crosses is a mask of the tile's size,
    :mod:`~attnbench.implementations._tile_bias`)."""
    lo, hi = pattern.row_ranges(nq, nk)  # [Nq] each
    layout = pattern.layout
    table = layout.table(nq, nk) if layout is not None else None  # [rows, nkb]
    blocks: list[list[Tile]] = []
    r0, r1 = rows if rows is not None else (0, nq)
    for q0 in range(r0, r1, block_q):
        q1 = min(r1, q0 + block_q)
        row_lo, row_hi = lo[q0:q1, None], hi[q0:q1, None]  # [bq, 1]
        first, last = int(row_lo.min()), int(row_hi.max())
        if last <= first:
            continue  # no row of the block sees a key
        allowed = None
        if table is not None and layout is not None:
            allowed = table[layout.row_blocks(nq, nk, torch.arange(q0, q1))]  # [bq, nkb]
        tiles: list[Tile] = []
        for k0, k1 in _tile_bounds(first, last, q0 + nk - nq, q1 - q0, block_k):
            cols = torch.arange(k0, k1)  # [bk]
            keep = (cols >= row_lo) & (cols < row_hi)  # [bq, bk]
            if allowed is not None and layout is not None:
                keep &= allowed[:, cols // layout.block]
            for a, b in _column_runs(keep.any(dim=0)):  # keys some row sees; none: skipped
                part = keep[:, a:b]  # [bq, b - a]
                if not bool(part.all()):
                    tiles.append(Tile(q0, q1 - q0, k0 + a, b - a, part))
                elif tiles and tiles[-1].keep is None and tiles[-1].k0 + tiles[-1].lk == k0 + a:
                    tiles[-1] = Tile(q0, q1 - q0, tiles[-1].k0, tiles[-1].lk + b - a)  # join full tiles
                else:
                    tiles.append(Tile(q0, q1 - q0, k0 + a, b - a))
        blocks.append(tiles)
    if not stairs:
        return join_tall(group_tiles([t for tiles in blocks for t in tiles], device))
    joined, rest = _staircases(blocks, nk - nq)
    return joined + join_tall(group_tiles(rest, device))


def _column_runs(seen: Tensor) -> list[tuple[int, int]]:
    """Maximal runs ``[a, b)`` of True in a 1-D bool tensor."""
    padded = torch.cat([torch.zeros(1, dtype=torch.int8), seen.to(torch.int8), torch.zeros(1, dtype=torch.int8)])
    edges = (padded[1:] - padded[:-1]).nonzero().flatten().tolist()  # starts (+1) and ends (-1) alternate
    return list(zip(edges[0::2], edges[1::2], strict=True))


def _staircases(blocks: list[list[Tile]], offset: int) -> tuple[list[Piece], list[Tile]]:
    """Runs of consecutive query blocks whose tiles are a full run of keys from a common first
    key ``K`` up to their diagonal ``d0``, then the top-left causal diagonal tile: together they
    are keys ``[K, d0_first)`` for every row (one unmasked tile) and a single top-left causal
    tile from ``d0_first`` (under causal attention with ``Nq = Nk``: the whole problem is one
    causal tile). Returns those pieces and the tiles of the other blocks."""
    pieces: list[Piece] = []
    rest: list[Tile] = []
    segment: list[list[Tile]] = []
    start = -1

    def flush() -> None:
        if len(segment) < 2:
            rest.extend(t for tiles in segment for t in tiles)
        else:
            q0, d0 = segment[0][0].q0, segment[0][0].q0 + offset
            q1 = segment[-1][-1].q0 + segment[-1][-1].lq
            rows, keys = q1 - q0, q1 + offset - d0
            if d0 > start:
                pieces.append(Piece(1, q0, rows, rows, start, 0, d0 - start))
            pieces.append(Piece(1, q0, rows, rows, d0, 0, keys, causal=True))
        segment.clear()

    for tiles in blocks:
        diag = tiles[-1] if tiles else None
        q0 = diag.q0 if diag is not None else -1
        eligible = (
            diag is not None
            and diag.keep is not None
            and diag.k0 == q0 + offset
            and diag.lk == diag.lq
            and bool(torch.equal(diag.keep, top_left_causal(diag.lq, diag.lk)))
            and (
                len(tiles) == 1 or (len(tiles) == 2 and tiles[0].keep is None and tiles[0].k0 + tiles[0].lk == diag.k0)
            )
        )
        if not eligible:
            flush()
            rest.extend(tiles)
            continue
        first_key = tiles[0].k0
        adjacent = bool(segment) and segment[-1][-1].q0 + segment[-1][-1].lq == q0
        if not (adjacent and first_key == start):
            flush()
            start = first_key
        segment.append(tiles)
    flush()
    return pieces, rest


def join_tall(pieces: list[Piece]) -> list[Piece]:
    """Join unmasked single-tile pieces over the same keys whose query rows follow each other."""
    tall = sorted((p for p in pieces if _is_tall(p)), key=lambda p: (p.k0, p.lk, p.q0))
    rest = [p for p in pieces if not _is_tall(p)]
    joined: list[Piece] = []
    for p in tall:
        last = joined[-1] if joined else None
        if last is not None and (last.k0, last.lk) == (p.k0, p.lk) and last.q0 + last.lq == p.q0:
            lq = last.lq + p.lq
            joined[-1] = Piece(1, last.q0, lq, lq, last.k0, 0, last.lk)
        else:
            joined.append(p)
    return joined + rest


def _is_tall(p: Piece) -> bool:
    return p.n == 1 and p.keep is None and not p.causal and p.keys is None


def _tile_bounds(first: int, last: int, d0: int, bq: int, bk: int) -> list[tuple[int, int]]:
    """Key tiles ``[k0, k1)`` covering ``[first, last)``: ``[d0, d0 + bq)`` and ``bk`` wide on
    either side of it, clipped."""
    edges = {first, last}
    edge = d0
    while edge > first:
        edges.add(edge)
        edge -= bk
    edge = d0 + bq
    edges.add(d0)
    while edge < last:
        edges.add(edge)
        edge += bk
    cuts = sorted(e for e in edges if first <= e <= last)
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]
