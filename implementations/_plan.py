"""The plan of a tiled attention call: which tiles of which shapes, batched into pieces.

Planned once per case, outside the timed call; :mod:`~attnbench.implementations._tiles` runs a
plan on a fused kernel or with matrix products and merges the pieces by their log-sum-exp.

A piece
-------
:class:`Piece` is ``n`` tiles of ``lq`` queries and ``lk`` keys: tile ``i`` holds the queries
``q0 + i·q_step …`` and the keys ``k0 + i·k_step …`` (``k_step = 0``: every tile reads the same
keys; ``keys`` given: keys gathered by index). Queries and keys are *strided views* of ``q`` and
``k`` (overlapping ones where ``k_step < lk``), so a piece copies nothing unless it gathers. A
tile is computed whole, unmasked, or top-left causal (query ``r`` sees key ``c ≤ r``, no mask
tensor), or with a boolean ``keep`` mask shared by the tiles or given per tile.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from attnbench.case.patterns import Pattern

Tensor = torch.Tensor
NEG_INF = float("-inf")


# -- pieces -----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Piece:
    """``n`` tiles of ``lq × lk``: tile ``i`` holds queries ``q0 + i·q_step + [0, lq)`` and keys
    ``k0 + i·k_step + [0, lk)`` (or ``keys[i]`` when gathered). ``causal``: top-left causal within
    the tile; ``keep``: ``[n or 1, lq, lk]`` bool, True where a pair is computed (None: all);
    ``empty``: ``[n or 1, lq]`` bool, rows that see no key in this piece (None: none)."""

    n: int
    q0: int
    q_step: int
    lq: int
    k0: int
    k_step: int
    lk: int
    causal: bool = False
    keep: Tensor | None = None
    keys: Tensor | None = None
    empty: Tensor | None = None
    _bias: dict[torch.dtype, Tensor] = field(default_factory=dict, repr=False)
    _scratch: dict[tuple[Any, ...], Tensor] = field(default_factory=dict, repr=False)

    def scratch(self, role: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A buffer kept from call to call (gathered keys and values): a fresh allocation of tens
        of MB costs a page fault per 4 KB page on every call, more than the copy itself."""
        key = (role, shape, like.dtype, like.device)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    def split(self, max_rows: int) -> list[Piece]:
        """This piece as pieces of at most ``max_rows`` query rows each (fewer tiles, or fewer rows
        of one tall unmasked tile); a causal tile stays whole."""
        if self.n * self.lq <= max_rows or self.causal:
            return [self]
        if self.n == 1:
            if self.keep is not None or self.keys is not None:
                return [self]
            step = max(1, max_rows)
            return [
                Piece(1, self.q0 + r, min(step, self.lq - r), min(step, self.lq - r), self.k0, 0, self.lk)
                for r in range(0, self.lq, step)
            ]
        per = max(1, max_rows // self.lq)
        parts = []
        for i in range(0, self.n, per):
            j = min(self.n, i + per)
            parts.append(
                Piece(
                    j - i,
                    self.q0 + i * self.q_step,
                    self.q_step,
                    self.lq,
                    self.k0 + i * self.k_step,
                    self.k_step,
                    self.lk,
                    self.causal,
                    _slice(self.keep, i, j),
                    None if self.keys is None else self.keys[i:j],
                    _slice(self.empty, i, j),
                )
            )
        return parts

    def bias(self, dtype: torch.dtype) -> Tensor | None:
        """The additive mask (0 kept, -inf hidden) in ``dtype``, ``[n or 1, lq, lk]``, cached."""
        if self.keep is None:
            return None
        if dtype not in self._bias:
            zeros = torch.zeros(self.keep.shape, dtype=dtype, device=self.keep.device)
            self._bias[dtype] = zeros.masked_fill_(~self.keep, NEG_INF)
        return self._bias[dtype]

    def rows(self) -> Tensor:
        """``[n, lq]`` query rows of the tiles."""
        return self.q0 + torch.arange(self.n)[:, None] * self.q_step + torch.arange(self.lq)[None, :]

    def key_index(self) -> Tensor:
        """``[n, lk]`` keys of the tiles."""
        if self.keys is not None:
            return self.keys.cpu()
        return self.k0 + torch.arange(self.n)[:, None] * self.k_step + torch.arange(self.lk)[None, :]

    def pairs(self) -> int:
        """Pairs this piece computes per (batch, head): the kernel computes whole tiles."""
        return self.n * self.lq * self.lk


@dataclass(frozen=True, eq=False)
class Plan:
    """Pieces whose tiles cover every kept pair exactly once (masked pairs aside), and how each
    one reaches the accumulators: ``"base"`` (the first piece covers every row once: its output
    *is* the accumulator), ``"assign"`` (its rows are fresh: copied) or ``"merge"``. ``init``:
    the accumulators start as zeros and ``-inf`` (some row is never assigned)."""

    nq: int
    nk: int
    pieces: tuple[Piece, ...]
    modes: tuple[str, ...]
    init: bool

    def pairs(self) -> int:
        return sum(p.pairs() for p in self.pieces)


def _slice(x: Tensor | None, i: int, j: int) -> Tensor | None:
    """Tiles ``i:j`` of a per-tile tensor (``[n, ...]``), or the shared one (``[1, ...]``)."""
    if x is None or x.shape[0] == 1:
        return x
    return x[i:j]


def make_plan(nq: int, nk: int, pieces: Sequence[Piece], max_rows: int | None = None) -> Plan:
    """Order the pieces (the one covering most rows first) and choose how each is accumulated.
    With ``max_rows``, pieces other than a single one covering everything are split so that no
    kernel output exceeds ``max_rows`` rows (see :func:`rows_per_call`)."""
    ordered = sorted(pieces, key=lambda p: -p.n * p.lq)
    whole = len(ordered) == 1 and ordered[0].n * ordered[0].lq == nq
    if max_rows is not None and not whole:
        ordered = [part for p in ordered for part in p.split(max_rows)]
    covered = torch.zeros(nq, dtype=torch.bool)
    modes: list[str] = []
    init = False
    for index, p in enumerate(ordered):
        rows = p.rows().flatten()  # [n·lq]
        seen = covered[rows]
        if index == 0 and p.q0 == 0 and p.q_step == p.lq and p.n * p.lq == nq:
            modes.append("base")
        elif not bool(seen.any()):
            modes.append("assign")
        else:
            modes.append("merge")
            init |= not bool(seen.all())
        covered[rows] = True
    init |= not bool(covered.all())
    return Plan(nq, nk, tuple(ordered), tuple(modes), init and (not modes or modes[0] != "base"))


#: The largest kernel output allocated per call: glibc's malloc serves blocks under 32 MiB from
#: memory it keeps, larger ones by a fresh ``mmap`` whose every 4 KB page faults (~10 ms per
#: 32 MiB here, on every call).
CALL_BYTES = 16 << 20


def rows_per_call(batch: int, heads: int, head_dim: int) -> int:
    """Query rows per kernel call so that its float32 output stays under :data:`CALL_BYTES`."""
    return max(1, CALL_BYTES // (batch * heads * head_dim * 4))


def top_left_causal(lq: int, lk: int) -> Tensor:
    """``[lq, lk]`` bool, True where ``c <= r``."""
    return torch.arange(lk)[None, :] <= torch.arange(lq)[:, None]


def _tile_piece(tile: Tile, keep: Tensor | None, causal: bool) -> Piece:
    return Piece(1, tile.q0, tile.lq, tile.lq, tile.k0, tile.lk, tile.lk, causal, keep, None, _empty(keep))


def _empty(keep: Tensor | None) -> Tensor | None:
    if keep is None:
        return None
    empty = ~keep.any(dim=-1)  # [n, lq]
    return empty if bool(empty.any()) else None


@dataclass(frozen=True, eq=False)
class Tile:
    """One query block ``[q0, q0 + lq)`` against keys ``[k0, k0 + lk)``; ``keep`` ``[lq, lk]``
    bool, or None when every pair is kept."""

    q0: int
    lq: int
    k0: int
    lk: int
    keep: Tensor | None = None


def group_tiles(tiles: Iterable[Tile], device: torch.device | str) -> list[Piece]:
    """Batch tiles into pieces: tiles of equal shape and mask whose queries follow each other
    (``q_step = lq``) and whose keys either stay put (``k_step = 0``) or move with the queries
    (``k_step = q_step``) become one piece; full tiles need no mask, top-left causal ones none
    either. Whatever is left over runs as a piece of one tile."""
    groups: dict[tuple[Any, ...], list[Tile]] = {}
    kinds: dict[int, tuple[bool, bool]] = {}
    for tile in tiles:
        keep = tile.keep
        full = keep is None or bool(keep.all())
        causal = keep is not None and not full and bool(torch.equal(keep, top_left_causal(tile.lq, tile.lk)))
        kinds[id(tile)] = (full, causal)
        mask_key = b"" if (keep is None or full or causal) else keep.numpy().tobytes()
        groups.setdefault((tile.lq, tile.lk, full, causal, mask_key), []).append(tile)
    pieces: list[Piece] = []
    for members in groups.values():
        members.sort(key=lambda t: t.q0)
        for run in _runs(members):
            first = run[0]
            full, causal = kinds[id(first)]
            keep = None if (full or causal or first.keep is None) else first.keep[None].to(device)  # [1, lq, lk]
            n = len(run)
            if n == 1:
                pieces.append(_tile_piece(first, keep, causal))
                continue
            k_step = run[1].k0 - first.k0
            if k_step == 0 and keep is None and not causal:  # same keys for consecutive rows: one tall tile
                pieces.append(Piece(1, first.q0, n * first.lq, n * first.lq, first.k0, 0, first.lk))
                continue
            pieces.append(
                Piece(n, first.q0, first.lq, first.lq, first.k0, k_step, first.lk, causal, keep, None, _empty(keep))
            )
    return pieces


def _runs(tiles: list[Tile]) -> list[list[Tile]]:
    """Split tiles sorted by ``q0`` into runs of adjacent query blocks whose keys advance by a
    constant step of 0 or ``lq``."""
    runs: list[list[Tile]] = []
    for tile in tiles:
        if runs:
            run = runs[-1]
            last = run[-1]
            step = tile.k0 - last.k0
            follows = tile.q0 == last.q0 + last.lq and step in (0, last.lq)
            if follows and (len(run) == 1 or step == run[1].k0 - run[0].k0):
                run.append(tile)
                continue
        runs.append([tile])
    return runs


def plan_pattern(
    pattern: Pattern,
    nq: int,
    nk: int,
    block_q: int,
    block_k: int,
    device: torch.device | str = "cpu",
    max_rows: int | None = None,
) -> Plan:
    """See :func:`pattern_pieces`; the plan of all query rows."""
    return make_plan(nq, nk, pattern_pieces(pattern, nq, nk, block_q, block_k, device), max_rows)


def pattern_pieces(
    pattern: Pattern,
    nq: int,
    nk: int,
    block_q: int,
    block_k: int,
    device: torch.device | str = "cpu",
    rows: tuple[int, int] | None = None,
) -> list[Piece]:
    """Tiles for any pattern, aligned to each query block's diagonal.

    Query block ``[q0, q0 + block_q)`` has its first row at key position ``d0 = q0 + Nk - Nq``;
    its key tiles are ``[d0, d0 + block_q)`` (the *diagonal* tile: top-left causal under a causal
    pattern) and tiles of ``block_k`` keys on either side, clipped to the keys the block's rows may
    see (``pattern.row_ranges``). A tile whose pairs are all masked is skipped and consecutive full
    tiles of a block are joined. Consecutive blocks that see a common run of keys and then their
    causal diagonal form a staircase, computed as one causal tile (:func:`_staircases`); the
    other tiles of all blocks are batched by :func:`group_tiles` (same relative position, same
    mask: one piece). ``rows``: plan only the query rows ``[r0, r1)`` (blocks start at ``r0``)."""
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
    stairs, rest = _staircases(blocks, nk - nq)
    return stairs + join_tall(group_tiles(rest, device))


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
