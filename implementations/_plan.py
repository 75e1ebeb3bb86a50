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

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

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


def tiles_as_heads(p: Piece, by_head: bool) -> bool:
    """Tiles as the kernel's heads (``by_head``: queries and keys have the same heads) unless the
    piece has a mask per tile: then tiles are the kernel's batch, so that the heads of one tile,
    computed one after the other, read its mask from cache."""
    return by_head and (p.keep is None or p.keep.shape[0] == 1)


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
