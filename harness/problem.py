"""What one attention call computes: shapes, dtype, device, pattern and mode.

A :class:`Problem` is the single description shared by every part of attnbench: the suite
grid expands into problems, an implementation declares whether it supports one, the reference
computes it in float64, and the FLOP counter counts its work.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from attnbench.devices import canonical
from attnbench.modes import MODES, Mode, mode
from attnbench.patterns import Pattern

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype named ``name`` ("float32", "bfloat16", ...)."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}") from None


@dataclass(frozen=True)
class Problem:
    """One attention call: ``q`` is ``[batch, heads, seq_len, head_dim]``, ``k``/``v`` are
    ``[batch, kv_heads, kv_len, head_dim]``.

    ``kv_heads`` divides ``heads`` (grouped-query attention when smaller). With ``causal`` and
    ``seq_len != kv_len`` the mask is aligned bottom-right: the last query sees every key.
    """

    batch: int = 1
    heads: int = 8
    seq_len: int = 512
    head_dim: int = 64
    kv_heads: int = 0  # 0: same as heads
    kv_len: int = 0  # 0: same as seq_len
    dtype: str = "float32"
    device: str = "cpu"
    causal: bool = False
    window: int = 0
    layout: str = "dense"
    mode: str = "forward"
    #: Seeds the inputs and :meth:`generator` (random features, random layouts of a plugin).
    seed: int = 0
    pattern: Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kv_heads == 0:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.kv_len == 0:
            object.__setattr__(self, "kv_len", self.seq_len)
        for key in ("batch", "heads", "seq_len", "head_dim", "kv_heads", "kv_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.heads % self.kv_heads:
            raise ValueError(f"kv_heads ({self.kv_heads}) must divide heads ({self.heads})")
        if self.window < 0:
            raise ValueError(f"window must be 0 (none) or positive, got {self.window}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {list(MODES)}")
        object.__setattr__(self, "device", canonical(self.device))
        torch_dtype(self.dtype)
        pattern = Pattern.make(self.causal, self.window, self.layout)
        object.__setattr__(self, "layout", pattern.layout_name)
        object.__setattr__(self, "pattern", pattern)

    @property
    def scale(self) -> float:
        """The softmax scale, ``1/sqrt(head_dim)``."""
        return 1.0 / math.sqrt(self.head_dim)

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)

    @property
    def gqa(self) -> bool:
        return self.kv_heads != self.heads

    @property
    def cross(self) -> bool:
        return self.kv_len != self.seq_len

    @property
    def needs_grad(self) -> bool:
        return self.kind.needs_grad

    @property
    def kind(self) -> Mode:
        """The mode object (its timed call, work, bytes and checks)."""
        return mode(self.mode)

    def generator(self, salt: int = 0, device: str | None = None) -> torch.Generator:
        """A fresh generator seeded from the case's seed (and ``salt``): the same stream in
        ``prepare()``, ``attention()`` and ``reference()``, without touching torch's global state."""
        gen = torch.Generator(device=device or "cpu")
        return gen.manual_seed((self.seed * 1_000_003 + salt) % (2**63))

    def with_(self, **changes: Any) -> Problem:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The problem's fields as flat JSON-ready values."""
        out = asdict(self)
        out.pop("pattern", None)
        return out

    def make_inputs(
        self, seed: int | None = None, device: str | None = None, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Seeded random ``q, k, v`` (standard normal; the case's seed unless ``seed`` is given),
        generated in float32 on the CPU so that every device and dtype sees the same values, then
        moved and cast."""
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed)
        q = torch.randn(self.batch, self.heads, self.seq_len, self.head_dim, generator=gen)  # [B, H, Nq, D]
        k = torch.randn(self.batch, self.kv_heads, self.kv_len, self.head_dim, generator=gen)  # [B, Hkv, Nk, D]
        v = torch.randn(self.batch, self.kv_heads, self.kv_len, self.head_dim, generator=gen)  # [B, Hkv, Nk, D]
        target_dtype = dtype or self.torch_dtype
        target_device = device or self.device
        return tuple(t.to(device=target_device, dtype=target_dtype) for t in (q, k, v))  # type: ignore[return-value]

    def input_bytes(self) -> int:
        """Bytes held by ``q, k, v`` (and, with gradients, their gradients and the output's)."""
        elem = torch.empty((), dtype=self.torch_dtype).element_size()
        q_elems = self.batch * self.heads * self.seq_len * self.head_dim
        kv_elems = 2 * self.batch * self.kv_heads * self.kv_len * self.head_dim
        return (q_elems + kv_elems) * elem
