"""The KV cache a decode step reads: preallocated, ragged, contiguous or paged.

A decoding server keeps, for each sequence of a batch, the keys and values of every token seen
so far, in a cache allocated once for ``capacity`` tokens. Sequences hold different numbers of
valid tokens (``lengths``); a decode step appends its ``new`` tokens' keys and values after them
and attends to everything valid. Two layouts:

* **contiguous** — ``k, v`` are ``[B, Hkv, capacity, D]``; sequence ``b``'s token ``t`` is at
  ``[b, :, t]``.
* **paged** (vLLM's PagedAttention) — one pool of fixed-size pages, ``k, v`` are
  ``[1, Hkv, pages · page, D]`` (the layout PyTorch's paged FlexAttention uses), and a
  ``block_table`` ``[B, capacity / page]`` gives the pool page of each of a sequence's pages, in
  a seeded shuffled order, as pages end up after many sequences come and go.

With ``latent`` (multi-head latent attention's absorbed form: DeepSeek-V2/V3, Kimi K2) the cache
holds one tensor: each token's latent of ``D`` columns is its key, and its first ``Dv`` columns
are its value, ``v`` a view of ``k``. A step reads each token's ``D`` columns once.

Slots past a sequence's valid tokens hold stale values (large, finite), as a real cache does:
an implementation that reads them without masking is caught by the accuracy check.

The case fields that choose these: ``cache`` (``"contiguous"`` or ``"paged:16"``) and
``kv_lengths`` (``"uniform"``: every sequence holds ``kv_len - seq_len`` tokens, so the step
fills the cache; ``"ragged"`` or ``"ragged:F"``: seeded lengths between ``F·kv_len`` and
``kv_len`` after the step, the first sequence the longest; ``F`` defaults to 0.25).

Layer ``case``: imports nothing of attnbench outside ``attnbench.case``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attnbench.case.patterns import Pattern

Tensor = torch.Tensor
STALE = 1.0e3  # what slots past the valid tokens hold
RAGGED_LOW = 0.25


def parse_cache(text: str) -> int:
    """The page size of a ``cache`` field: 0 for ``"contiguous"``, ``P`` for ``"paged:P"``."""
    if text == "contiguous":
        return 0
    kind, _, size = text.partition(":")
    if kind == "paged" and (not size or size.isdigit()):
        page = int(size) if size else 16
        if page >= 1:
            return page
    raise ValueError(f"cache {text!r}: expected 'contiguous' or 'paged:P' with P a page size >= 1")


def parse_lengths(text: str) -> float | None:
    """The lowest fraction of a ``kv_lengths`` field: None for ``"uniform"``, ``F`` for ragged."""
    if text == "uniform":
        return None
    kind, _, frac = text.partition(":")
    if kind == "ragged":
        try:
            low = float(frac) if frac else RAGGED_LOW
        except ValueError:
            low = -1.0
        if 0.0 < low <= 1.0:
            return low
    raise ValueError(f"kv_lengths {text!r}: expected 'uniform', 'ragged' or 'ragged:F' with 0 < F <= 1")


def valid_lengths(batch: int, new: int, capacity: int, lengths: str, seed: int) -> Tensor:
    """``[B]`` int64: the tokens each sequence attends to after the step (its valid tokens plus
    the ``new`` ones), seeded; the first sequence is the longest, ``capacity``."""
    low = parse_lengths(lengths)
    if low is None:
        return torch.full((batch,), capacity, dtype=torch.int64)
    least = max(new, math.ceil(low * capacity))
    gen = torch.Generator().manual_seed(seed * 7919 + 13)
    drawn = torch.randint(least, capacity + 1, (batch,), generator=gen)
    drawn[0] = capacity
    return drawn


@dataclass
class KVCache:
    """A preallocated cache and the valid tokens of each sequence (see the module)."""

    k: Tensor  # contiguous: [B, Hkv, capacity, D]; paged: [1, Hkv, pages·page, D]
    v: Tensor
    lengths: Tensor  # [B] int64: valid tokens before the step
    new: int  # tokens each step appends
    capacity: int
    page: int = 0  # 0: contiguous
    block_table: Tensor | None = None  # [B, capacity/page] int64: pool page of each sequence page
    latent: bool = False  # v is k[..., :Dv], a view: one latent per token

    @property
    def paged(self) -> bool:
        return self.page > 0

    @property
    def batch(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def attended(self) -> Tensor:
        """``[B]``: the tokens each sequence attends to once the step has appended its own."""
        return self.lengths + self.new

    def slots(self, positions: Tensor) -> Tensor:
        """Where logical token ``positions`` ``[B, T]`` live on the cache's token axis ``[B, T]``."""
        if not self.paged:
            return positions
        assert self.block_table is not None
        pages = torch.gather(self.block_table, 1, positions // self.page)  # [B, T]
        return pages * self.page + positions % self.page

    def token_index(self, b: int) -> Tensor:
        """``[L_b]``: the token-axis index of each token sequence ``b`` attends to, in order."""
        positions = torch.arange(int(self.attended[b]), device=self.lengths.device)[None, :]  # [1, L_b]
        if not self.paged:
            return positions[0]
        return self.slots(positions.expand(self.batch, -1))[b] if self.batch else positions[0]

    def append(self, k_new: Tensor, v_new: Tensor) -> None:
        """Write the step's keys and values ``[B, Hkv, S, D]`` after each sequence's valid tokens."""
        positions = self.lengths[:, None] + torch.arange(self.new, device=self.lengths.device)[None, :]  # [B, S]
        where = self.slots(positions)  # [B, S]
        if self.paged:
            flat = where.reshape(-1)  # [B·S]
            self.k[0, :, flat] = k_new.transpose(0, 1).reshape(k_new.shape[1], -1, k_new.shape[-1])
            if not self.latent:  # else the values were written with the keys
                self.v[0, :, flat] = v_new.transpose(0, 1).reshape(v_new.shape[1], -1, v_new.shape[-1])
        else:
            rows = torch.arange(self.batch, device=where.device)[:, None]  # [B, 1]
            self.k[rows, :, where] = k_new.transpose(1, 2)  # indexed as [B, S, Hkv, D]
            if not self.latent:
                self.v[rows, :, where] = v_new.transpose(1, 2)

    def gather(self, b: int) -> tuple[Tensor, Tensor]:
        """Sequence ``b``'s attended keys and values, dense ``[1, Hkv, L_b, D]`` (a view when contiguous)."""
        length = int(self.attended[b])
        if not self.paged:
            return self.k[b : b + 1, :, :length], self.v[b : b + 1, :, :length]
        index = self.token_index(b)
        return self.k[:, :, index], self.v[:, :, index]

    def ranges(self, pattern: Pattern) -> tuple[Tensor, Tensor]:
        """``[B, S]`` each: the logical key range ``[lo, hi)`` each new token attends to (its
        sequence's valid tokens, causal among the new ones, within a window if any)."""
        los, his = [], []
        for n in self.attended.tolist():
            lo, hi = pattern.row_ranges(self.new, int(n))  # [S] each, bottom-right aligned
            los.append(lo)
            his.append(hi)
        device = self.lengths.device
        return torch.stack(los).to(device), torch.stack(his).to(device)

    def mask(self, pattern: Pattern, length: int) -> Tensor:
        """``[B, 1, S, length]`` bool over logical key positions, True where a pair is computed."""
        lo, hi = self.ranges(pattern)  # [B, S]
        j = torch.arange(length, device=lo.device)[None, None, :]  # [1, 1, length]
        return ((j >= lo[:, :, None]) & (j < hi[:, :, None]))[:, None]

    def padded_index(self) -> tuple[Tensor, Tensor]:
        """``([B, Lmax] token-axis indices, [B, Lmax] valid)``: every sequence's attended tokens,
        padded to the longest (padding points at slot 0 and is not valid)."""
        longest = int(self.attended.max())
        positions = torch.arange(longest, device=self.lengths.device)[None, :].expand(self.batch, -1)  # [B, Lmax]
        valid = positions < self.attended[:, None]
        return self.slots(torch.where(valid, positions, 0)), valid


def make_cache(
    batch: int,
    kv_heads: int,
    head_dim: int,
    capacity: int,
    new: int,
    *,
    page: int,
    lengths: str,
    seed: int,
    dtype: torch.dtype,
    device: str | torch.device,
    v_head_dim: int = 0,
    latent: bool = False,
) -> KVCache:
    """A cache with seeded random valid tokens and stale values elsewhere (see the module);
    values of ``v_head_dim`` dimensions where it is given (0: ``head_dim``), with ``latent`` the
    keys' first ``v_head_dim`` columns."""
    attended = valid_lengths(batch, new, capacity, lengths, seed)  # [B]
    gen = torch.Generator().manual_seed(seed * 104729 + 7)
    stale = torch.arange(capacity)[None, :] >= (attended - new)[:, None]  # [B, capacity]: not valid yet
    pages = -(-capacity // page) if page else 0
    room = pages * page if page else capacity  # token slots per sequence
    tensors = []
    dims = (head_dim,) if latent else (head_dim, v_head_dim or head_dim)
    for dim in dims:  # k, then v
        x = torch.randn(batch, kv_heads, capacity, dim, generator=gen)  # [B, Hkv, capacity, D or Dv]
        x.masked_fill_(stale[:, None, :, None], STALE)
        x = x.to(dtype)
        if room > capacity:
            x = torch.nn.functional.pad(x, (0, 0, 0, room - capacity), value=STALE)  # [B, Hkv, room, D]
        tensors.append(x)
    table = None
    if page:
        table = torch.randperm(batch * pages, generator=gen).view(batch, pages)  # [B, pages]: pool page of each
        for i, (x, dim) in enumerate(zip(tensors, dims, strict=True)):
            pool = torch.empty(kv_heads, batch * pages, page, dim, dtype=dtype)  # [Hkv, pool pages, page, D]
            pages_of = x.view(batch, kv_heads, pages, page, dim).transpose(0, 1)  # [Hkv, B, pages, page, D]
            pool[:, table.reshape(-1)] = pages_of.reshape(kv_heads, batch * pages, page, dim)
            tensors[i] = pool.view(1, kv_heads, batch * pages * page, dim)  # [1, Hkv, tokens, D]
    k = tensors[0].to(device)
    v = k[..., : v_head_dim or head_dim] if latent else tensors[1].to(device)  # with latent: a view of the keys
    return KVCache(
        k,
        v,
        (attended - new).to(device),
        new,
        capacity,
        page,
        None if table is None else table.to(device),
        latent,
    )
