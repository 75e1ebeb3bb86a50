"""Which (query, key) pairs an attention call computes: causal, sliding window, block layout.

Every implementation, the float64 reference, the FLOP counter and the masks handed to SDPA,
xformers and FlexAttention read the pattern from here, so that "the same function" means the
same set of pairs everywhere.

Positions are aligned bottom-right: query ``i`` of ``nq`` sits at key position
``p = i + nk - nq``, so the last query is level with the last key (as in SDPA's
``causal_lower_right`` and FlashAttention). Query ``i`` may attend key ``j`` when

* causal: ``j <= p``;
* window ``W > 0``: ``|p - j| < W`` — with causal the ``W`` keys ending at ``p``, otherwise the
  symmetric band of ``2W - 1`` keys centred on ``p``;
* block layout: the block table marks ``(p // block, j // block)`` as kept — blocks are cut by
  key position, so the diagonal block of every row holds its own key;
* packed documents (:mod:`attnbench.case.documents`): ``j`` is in the same document as ``p``.

and, besides them, StreamingLLM's sinks (``first = K``): ``j < K``, within the causal limit. The
first tokens are a second range beside ``row_ranges``' one: :meth:`Pattern.mask` and
:meth:`Pattern.pairs` count them, and an implementation that reads the ranges alone does not
declare ``first_tokens``.

All conditions hold together. A query that may attend no key outputs zeros (SDPA's convention).

Layer ``case``: imports nothing of attnbench outside ``attnbench.case``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache

import torch

LAYOUT_PRESETS: dict[str, dict[str, int]] = {
    # BigBird (Zaheer et al. 2020): a band of local blocks, global blocks and random blocks.
    "bigbird": {"block": 64, "local": 1, "global": 1, "random": 2, "seed": 0},
    # Longformer (Beltagy et al. 2020): a band of local blocks and global blocks.
    "longformer": {"block": 64, "local": 1, "global": 1, "random": 0, "seed": 0},
    # Blocked local attention only.
    "local": {"block": 64, "local": 1, "global": 0, "random": 0, "seed": 0},
}


@dataclass(frozen=True)
class BlockLayout:
    """A block-sparse layout: which ``block × block`` tiles of the score matrix are kept.

    ``local``: key blocks within this many blocks of the query block's diagonal;
    ``global``: the first ``global`` key blocks are seen by every query, and the first
    ``global`` query blocks (by position) see every key; ``random``: this many further key
    blocks per query block, drawn with ``seed`` so that the layout is reproducible.
    """

    name: str
    block: int = 64
    local: int = 1
    global_: int = 1
    random: int = 2
    seed: int = 0

    @classmethod
    def parse(cls, spec: str) -> BlockLayout:
        """Parse ``"bigbird"`` or ``"bigbird:block=32,random=3,seed=1"``."""
        name, _, params = spec.partition(":")
        name = name.strip()
        if name not in LAYOUT_PRESETS:
            raise ValueError(
                f"unknown layout {name!r}; expected 'dense' or one of {sorted(LAYOUT_PRESETS)}"
                " with optional parameters, e.g. 'bigbird:block=64,local=1,global=1,random=2,seed=0'"
            )
        values = dict(LAYOUT_PRESETS[name])
        for item in filter(None, (p.strip() for p in params.split(","))):
            key, eq, raw = item.partition("=")
            key = key.strip()
            if not eq or key not in values:
                raise ValueError(f"layout {spec!r}: bad parameter {item!r}; expected one of {sorted(values)}")
            try:
                values[key] = int(raw)
            except ValueError:
                raise ValueError(f"layout {spec!r}: {key} must be an integer, got {raw!r}") from None
        if values["block"] < 1 or min(values["local"], values["global"], values["random"]) < 0:
            raise ValueError(f"layout {spec!r}: block must be >= 1 and local, global, random >= 0")
        return cls(name, values["block"], values["local"], values["global"], values["random"], values["seed"])

    @property
    def spec(self) -> str:
        """Canonical text form, e.g. ``bigbird:block=64,local=1,global=1,random=2,seed=0``."""
        params = ",".join(f"{f.name.rstrip('_')}={getattr(self, f.name)}" for f in fields(self) if f.name != "name")
        return f"{self.name}:{params}"

    def shift(self, nq: int, nk: int) -> int:
        """Query rows before the first full row of blocks: ``(nk - nq) mod block``."""
        return (nk - nq) % self.block

    def row_blocks(self, nq: int, nk: int, rows: torch.Tensor) -> torch.Tensor:
        """The table row of each query row: its position block ``(i + nk - nq) // block``,
        counted from the first query's."""
        return (rows + self.shift(nq, nk)) // self.block

    def table(self, nq: int, nk: int) -> torch.Tensor:
        """The kept blocks, ``[ceil((nq + shift)/block), ceil(nk/block)]`` bool, built on the CPU.
        Row ``r`` holds the queries at key positions ``(r + first) * block ...`` (see
        :meth:`row_blocks`), column ``c`` the keys ``c * block ...``."""
        return _block_table(self, nq, nk).clone()


@lru_cache(maxsize=64)
def _block_table(layout: BlockLayout, nq: int, nk: int) -> torch.Tensor:
    """Blocks by key position: a query at position ``p = i + nk - nq`` is in position block
    ``p // block``; local blocks are those within ``local`` of it, global rows are position
    blocks ``0 .. global-1`` (none for ``global = 0``, whatever ``nq`` and ``nk``), global keys the
    first ``global`` key blocks."""
    block = layout.block
    first = (nk - nq) // block  # position block of query 0 (negative when nq > nk)
    rows = -(-(nq + layout.shift(nq, nk)) // block)
    nkb = -(-nk // block)
    pb = first + torch.arange(rows)[:, None]  # [rows, 1] position block of each table row
    kb = torch.arange(nkb)[None, :]  # [1, nkb]
    table = (pb - kb).abs() <= layout.local  # [rows, nkb]
    table |= kb < layout.global_
    table |= (pb >= 0) & (pb < layout.global_)
    if layout.random:
        gen = torch.Generator().manual_seed(layout.seed)
        picks = torch.rand(rows, nkb, generator=gen).argsort(dim=1)[:, : layout.random]  # [rows, r]
        table.scatter_(1, picks, True)
    return table


@dataclass(frozen=True)
class Pattern:
    """The set of (query, key) pairs to compute; see the module docstring."""

    causal: bool = False
    window: int = 0
    layout: BlockLayout | None = None
    documents: tuple[int, ...] = ()  # where each packed document after the first starts
    first: int = 0  # keys [0, first) visible beside the window (StreamingLLM's sinks)

    @classmethod
    def make(
        cls, causal: bool, window: int, layout: str | BlockLayout | None, documents: tuple[int, ...] = (),
        first: int = 0,
    ) -> Pattern:  # fmt: skip
        if isinstance(layout, str):
            layout = None if layout in ("", "dense") else BlockLayout.parse(layout)
        return cls(bool(causal), int(window), layout, tuple(documents), int(first))

    @property
    def layout_name(self) -> str:
        return "dense" if self.layout is None else self.layout.spec

    @property
    def is_full(self) -> bool:
        """True when every pair is computed."""
        return not self.causal and not self.window and self.layout is None and not self.documents

    def document_of(self, positions: torch.Tensor) -> torch.Tensor:
        """The packed document each key position is in (0 when the sequence is one document)."""
        if not self.documents:
            return torch.zeros_like(positions)
        return torch.searchsorted(torch.tensor(self.documents), positions, right=True)

    def row_ranges(self, nq: int, nk: int, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """For each query row, the half-open key range ``[lo, hi)`` allowed by causal, window and
        its packed document (the layout is applied on top). Both ``[len(rows)]`` int64."""
        i = torch.arange(nq) if rows is None else rows  # [R]
        p = i + (nk - nq)  # aligned position of each query
        lo = torch.zeros_like(i)
        hi = torch.full_like(i, nk)
        if self.causal:
            hi = torch.minimum(hi, p + 1)
        if self.window:
            lo = torch.maximum(lo, p - self.window + 1)
            if not self.causal:
                hi = torch.minimum(hi, p + self.window)
        if self.documents:  # only the query's own document: [its start, its end)
            bounds = torch.tensor([0, *self.documents, nk])
            doc = self.document_of(p)
            lo = torch.maximum(lo, bounds[doc])
            hi = torch.minimum(hi, bounds[doc + 1])
        hi = torch.maximum(hi, lo)  # empty rows: lo == hi
        return lo, hi

    def mask(
        self, nq: int, nk: int, device: str | torch.device = "cpu", rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Dense ``[nq, nk]`` bool mask, True where a pair is computed (``[len(rows), nk]`` for
        a subset of rows)."""
        i = torch.arange(nq) if rows is None else rows  # [R]
        lo, hi = self.row_ranges(nq, nk, i)
        j = torch.arange(nk)  # [Nk]
        allowed = (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])  # [R, Nk]
        if self.layout is not None:
            table = _block_table(self.layout, nq, nk)  # [rows, nkb]
            allowed &= table[self.layout.row_blocks(nq, nk, i)][:, j // self.layout.block]
        if self.first:  # the first keys, within the causal limit
            allowed |= (j[None, :] < self.first) & (j[None, :] <= (i + nk - nq)[:, None] if self.causal else True)
        return allowed.to(device)

    def _first_pairs(self, nq: int, nk: int, lo: torch.Tensor, hi: torch.Tensor) -> int:
        """The pairs the first keys add beyond each row's range ``[lo, hi)`` (no layout)."""
        if not self.first:
            return 0
        p = torch.arange(nq) + (nk - nq)
        reach = torch.clamp(torch.minimum(p + 1, torch.tensor(nk)) if self.causal else torch.full_like(p, nk), min=0)
        sinks = torch.clamp(reach, max=self.first)  # [Nq]: the first keys each row may see
        overlap = (torch.minimum(sinks, hi) - lo).clamp(min=0)
        return int((sinks - overlap).sum())

    def pairs(self, nq: int, nk: int) -> int:
        """The number of (query, key) pairs computed — the work of one head, without
        materializing the mask."""
        lo, hi = self.row_ranges(nq, nk)  # [Nq]
        if self.layout is None:
            return int((hi - lo).sum()) + self._first_pairs(nq, nk, lo, hi)
        block = self.layout.block
        table = _block_table(self.layout, nq, nk)  # [rows, nkb]
        starts = torch.arange(table.shape[1]) * block  # [nkb]
        ends = torch.clamp(starts + block, max=nk)
        total = 0
        for r0 in range(0, nq, 4096):
            r1 = min(nq, r0 + 4096)
            overlap = (
                torch.minimum(ends[None, :], hi[r0:r1, None]) - torch.maximum(starts[None, :], lo[r0:r1, None])
            ).clamp(min=0)  # [R, nkb]
            kept = table[self.layout.row_blocks(nq, nk, torch.arange(r0, r1))]  # [R, nkb]
            total += int((overlap * kept).sum())
        return total
