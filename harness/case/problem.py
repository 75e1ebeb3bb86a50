"""What one attention call computes: shapes, dtype, device, pattern and mode.

A :class:`Problem` is the single description shared by every part of attnbench: the suite
grid expands into problems, an implementation declares whether it supports one, the reference
computes it in float64, and the FLOP counter counts its work.

Layer ``case``: imports nothing of attnbench outside ``attnbench.case``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from typing import Any

import torch

from attnbench.case.devices import canonical
from attnbench.case.documents import document_cuts, parse_documents
from attnbench.case.fields import CaseField, at_least, between, case_field, one_of, parses, short_label
from attnbench.case.kvcache import parse_cache, parse_lengths
from attnbench.case.modes import DECODE, FORWARD, MODES, Mode, mode
from attnbench.case.patterns import Pattern
from attnbench.case.probes import Targets, parse_probe, probe_inputs, targets
from attnbench.case.variants import BIASES, SOFTCAP_SPREAD, check_variants, parse_sinks, softcap_ok

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


#: What a case can ask of an implementation: an implementation declares the features it can
#: compute (``features``) and those it cannot run without (``requires``). ``decode``: it reads a
#: KV cache itself; without it a decode case runs through the dense-cache adapter.
FEATURES: tuple[str, ...] = (
    "causal", "window", "layout", "gqa", "cross", "backward", "decode", "softcap", "alibi", "sinks", "documents",
    "v_head_dim", "latent", "first_tokens",
)  # fmt: skip
#: Features a case may use although an implementation lacks them (the adapter covers decode).
OPTIONAL_FEATURES: frozenset[str] = frozenset({"decode"})

SHORT_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}


_device_ok = parses(canonical)
_layout_ok = parses(lambda value: Pattern.make(False, 0, value))
_cache_ok = parses(parse_cache)
_lengths_ok = parses(parse_lengths)
_probe_ok = parses(parse_probe)
_documents_ok = parses(parse_documents)


def _heads(value: Any, case: dict[str, Any]) -> str:
    kv = case.get("kv_heads") or value
    return f"H{value}" if kv == value else f"H{value}/{kv}"


def _lengths(value: Any, case: dict[str, Any]) -> str:
    kv = case.get("kv_len") or value
    return f"N{value}" if kv == value else f"N{value}x{kv}"


@dataclass(frozen=True)
class Problem:
    """One attention case: ``q`` is ``[batch, heads, seq_len, head_dim]``, ``k``/``v`` are
    ``[batch, kv_heads, kv_len, head_dim]``, computed in ``dtype`` on ``device`` with ``threads``
    CPU threads, for the pattern (``causal``, ``window``, ``layout``) and the ``mode``.

    ``kv_heads`` divides ``heads`` (grouped-query attention when smaller). With ``causal`` and
    ``seq_len != kv_len`` the mask is aligned bottom-right: the last query sees every key. In
    ``decode`` mode, ``seq_len`` new tokens attend to a KV cache of capacity ``kv_len`` laid out
    as ``cache`` and holding ``kv_lengths`` valid tokens per sequence.

    Every field is declared here once, with the metadata (:mod:`attnbench.case.fields`) from which
    suites, records, labels, report groups and compare's case names are derived.
    """

    # Each field: its default, then its metadata — element type, the suite grid's default (None:
    # required), what a valid value is, its check, its short form in labels, its place in them.
    batch: int = case_field(1, CaseField(int, [1], "integers >= 1", at_least(1), lambda v, c: f"B{v}", 30))
    heads: int = case_field(8, CaseField(int, [8], "integers >= 1", at_least(1), _heads, 31))
    seq_len: int = case_field(
        512, CaseField(int, None, "integers from 1 to 16777216", between(1, 1 << 24), _lengths, 32, group=False)
    )
    head_dim: int = case_field(
        64, CaseField(int, [64], "integers from 1 to 1024", between(1, 1024), lambda v, c: f"D{v}", 33)
    )
    v_head_dim: int = case_field(  # 0: same as head_dim
        0,
        CaseField(
            int, [0], "integers from 0 to 1024 (0: same as head_dim; multi-head latent attention's 128 beside 192)",
            between(0, 1024), lambda v, c: f"Dv{v}" if v and v != c.get("head_dim") else None, 34,
        ),
    )  # fmt: skip
    latent: bool = case_field(  # decode: the values are the keys' first v_head_dim columns (MLA absorbed)
        False,
        CaseField(
            bool, [False], "booleans (decode: values are the first v_head_dim columns of the keys, one latent"
            " read once, as multi-head latent attention decodes)", None, lambda v, c: "latent" if v else None, 35,
        ),
    )  # fmt: skip
    kv_heads: int = case_field(  # 0: same as heads
        0, CaseField(int, [], "integers >= 1 that divide heads (empty: same as heads)", at_least(1), empty_ok=True)
    )
    kv_len: int = case_field(  # 0: same as seq_len
        0,
        CaseField(
            int, [], "integers from 1 to 16777216 (empty: same as seq_len)", between(1, 1 << 24),
            group=False, empty_ok=True,
        ),
    )  # fmt: skip
    dtype: str = case_field(
        "float32",
        CaseField(
            str, ["float32", "bfloat16"], f"{sorted(DTYPES)} or 'auto'", one_of(DTYPES),
            lambda v, c: SHORT_DTYPE.get(v, v), 11, auto=("auto",),
        ),
    )  # fmt: skip
    device: str = case_field(
        "cpu",
        CaseField(
            str, ["cpu"], "'cpu', 'cuda', 'cuda:N', 'cuda:all', 'mps' or 'auto'", _device_ok,
            lambda v, c: v, 12, auto=("auto", "cuda:all"),
        ),
    )  # fmt: skip
    causal: bool = case_field(
        False, CaseField(bool, [False, True], "booleans", None, lambda v, c: "causal" if v else None, 40)
    )
    window: int = case_field(
        0, CaseField(int, [0], "integers >= 0 (0: no window)", at_least(0), lambda v, c: f"W{v}" if v else None, 41)
    )
    layout: str = case_field(
        "dense",
        CaseField(
            str, ["dense"], "'dense' or block layouts such as 'bigbird:block=64,local=1,global=1,random=2,seed=0'",
            _layout_ok, lambda v, c: None if v == "dense" else str(v).split(":")[0], 42,
        ),
    )  # fmt: skip
    mode: str = case_field(
        FORWARD.name, CaseField(str, [FORWARD.name], f"{list(MODES)}", one_of(MODES), lambda v, c: v, 10)
    )
    threads: int = case_field(
        0,
        CaseField(
            int, [0], "integers >= 0 (0: every usable core), or 'auto'", at_least(0), lambda v, c: f"t{v}", 90,
            group=False, auto=("auto",),
        ),
    )  # fmt: skip
    cache: str = case_field(
        "contiguous",
        CaseField(
            str, ["contiguous"], "'contiguous' or 'paged:P' (pages of P tokens), for decode", _cache_ok,
            lambda v, c: None if v == "contiguous" else str(v), 50,
        ),
    )  # fmt: skip
    kv_lengths: str = case_field(
        "uniform",
        CaseField(
            str, ["uniform"], "'uniform', 'ragged' or 'ragged:F' (lengths from F·kv_len up), for decode",
            _lengths_ok, lambda v, c: None if v == "uniform" else str(v), 51,
        ),
    )  # fmt: skip
    probe: str = case_field(
        "random",
        CaseField(
            str, ["random"], "'random' or a probe: retrieval, previous_token, first_token, recency, induction,"
            " global, toy (optionally ':mass=M')", _probe_ok, lambda v, c: None if v == "random" else str(v), 52,
        ),
    )  # fmt: skip
    softcap: float = case_field(
        0.0,
        CaseField(
            float, [0.0], "numbers >= 0 (0: none; Gemma 2's 50: scores become 50·tanh(s/50))", softcap_ok,
            lambda v, c: f"cap{v:g}" if v else None, 43,
        ),
    )  # fmt: skip
    bias: str = case_field(
        "none",
        CaseField(
            str, ["none"], f"{list(BIASES)} (ALiBi: a per-head linear distance bias)", one_of(BIASES),
            lambda v, c: None if v == "none" else str(v), 44,
        ),
    )  # fmt: skip
    sinks: str = case_field(
        "none",
        CaseField(
            str, ["none"], "'none', 'learned' (a seeded sink logit per head joins every softmax) or 'first:K'"
            " (StreamingLLM: the first K tokens always visible)", parses(parse_sinks),
            lambda v, c: None if v == "none" else f"sinks:{v}", 45,
        ),
    )  # fmt: skip
    documents: str = case_field(
        "1",
        CaseField(
            str, ["1"], "'1' or DIST:K packed documents, DIST uniform, longtail or bimodal (e.g. 'longtail:8')",
            _documents_ok, lambda v, c: None if v == "1" else f"docs:{v}", 46,
        ),
    )  # fmt: skip
    #: Seeds the inputs and :meth:`generator` (random features, random layouts of a plugin).
    seed: int = 0
    pattern: Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kv_heads == 0:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.kv_len == 0:
            object.__setattr__(self, "kv_len", self.seq_len)
        if self.v_head_dim == self.head_dim:  # one spelling of "the same": 0
            object.__setattr__(self, "v_head_dim", 0)
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
        parse_cache(self.cache)
        parse_lengths(self.kv_lengths)
        if self.kind.reads_cache:
            if self.seq_len > self.kv_len:
                raise ValueError(f"decode: {self.seq_len} new tokens (seq_len) exceed the cache (kv_len {self.kv_len})")
            if self.layout != "dense":
                raise ValueError("decode: block layouts are not defined against a KV cache; use layout 'dense'")
        parse_probe(self.probe)
        if self.probe != "random" and self.kind.reads_cache:
            raise ValueError("probes plant structure in a whole sequence's queries and keys: not in decode mode")
        if not self.kind.reads_cache and (self.cache, self.kv_lengths) != ("contiguous", "uniform"):
            raise ValueError(f"cache and kv_lengths describe a KV cache: they apply to mode {DECODE.name!r} only")
        object.__setattr__(self, "softcap", float(self.softcap))
        check_variants(self)
        torch_dtype(self.dtype)
        cuts = document_cuts(self.documents, self.kv_len, self.seed) if self.documents != "1" else ()
        pattern = Pattern.make(self.causal, self.window, self.layout, cuts, parse_sinks(self.sinks))
        object.__setattr__(self, "layout", pattern.layout_name)
        object.__setattr__(self, "pattern", pattern)

    @property
    def varies_scores(self) -> bool:
        """Whether the case changes the scores (soft-capping, a bias) or the softmax (sinks)."""
        return bool(self.softcap) or self.bias != "none" or self.learned_sinks

    @property
    def learned_sinks(self) -> bool:
        """Whether each head has a sink logit in its softmax (``sinks = "learned"``)."""
        return self.sinks == "learned"

    @property
    def dv(self) -> int:
        """The values' (and the output's) head dimension."""
        return self.v_head_dim or self.head_dim

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

    def uses(self) -> dict[str, bool]:
        """Which features (:data:`FEATURES`) the case uses: derived here, and nowhere else."""
        return {
            "causal": self.causal,
            "window": self.window > 0,
            "layout": self.pattern.layout is not None,
            "gqa": self.gqa,
            "cross": self.cross,
            "backward": self.needs_grad,
            "decode": self.kind.reads_cache,
            "softcap": self.softcap > 0,
            "alibi": self.bias == "alibi",
            "sinks": self.learned_sinks,
            "first_tokens": self.pattern.first > 0,
            "documents": self.documents != "1",
            "v_head_dim": self.v_head_dim != 0,
            "latent": self.latent,
        }

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

    def fields(self) -> dict[str, Any]:
        """The case's fields as record fields (its key fields and its seed)."""
        return self.as_dict()

    def label(self) -> str:
        """A short name, e.g. ``forward fp32 cpu B1 H32/8 N1x4096 D128 causal t0``."""
        spec = {f.name: f.metadata["case"] for f in dataclass_fields(self) if "case" in f.metadata}
        return short_label(self.as_dict(), spec, lambda row, key: row[key])

    def make_inputs(
        self, seed: int | None = None, device: str | None = None, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Seeded random ``q, k, v`` (standard normal; the case's seed unless ``seed`` is given),
        generated in float32 on the CPU so that every device and dtype sees the same values, then
        moved and cast. With a soft-cap ``c`` random queries are scaled by ``c / 1.5``
        (:data:`~attnbench.case.variants.SOFTCAP_SPREAD`); a probe's planted mass is left as planted."""
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed)
        if self.probe != "random":  # planted structure (attnbench.case.probes)
            kind, mass = parse_probe(self.probe)
            q, k, v, _ = probe_inputs(
                kind, mass, self.batch, self.heads, self.kv_heads, self.seq_len, self.kv_len, self.head_dim,
                self.full_visible(), self.seed if seed is None else seed, self.causal, self.document_starts(),
            )  # fmt: skip
        else:
            q = torch.randn(self.batch, self.heads, self.seq_len, self.head_dim, generator=gen)  # [B, H, Nq, D]
            k = torch.randn(self.batch, self.kv_heads, self.kv_len, self.head_dim, generator=gen)  # [B, Hkv, Nk, D]
            v = torch.randn(self.batch, self.kv_heads, self.kv_len, self.dv, generator=gen)  # [B, Hkv, Nk, Dv]
            if self.softcap:  # scores spread to 2/3 of the cap, where the tanh bends (attnbench.case.variants)
                q = q * (self.softcap / SOFTCAP_SPREAD)
        target_dtype = dtype or self.torch_dtype
        target_device = device or self.device
        return tuple(t.to(device=target_device, dtype=target_dtype) for t in (q, k, v))  # type: ignore[return-value]

    def full(self) -> Problem:
        """The same case with no window and no block layout: the unrestricted softmax attention
        that probes are planted for and that fidelity is measured against."""
        return self.with_(window=0, layout="dense")

    def full_visible(self) -> torch.Tensor:
        """``[Nq]``: how many keys each query sees under unrestricted (causal or full) attention."""
        lo, hi = self.full().pattern.row_ranges(self.seq_len, self.kv_len)
        return hi - lo

    def targets(self) -> Targets:
        """The planted targets of this case's probe (none for ``random``)."""
        kind = parse_probe(self.probe)[0]
        return targets(kind, self.seq_len, self.kv_len, self.seed, self.causal, self.document_starts())

    def document_starts(self) -> torch.Tensor | None:
        """``[Nq]``: where each query's packed document begins, or None for one sequence."""
        if self.documents == "1":
            return None
        cuts = torch.tensor((0, *document_cuts(self.documents, self.kv_len, self.seed)))  # [K] document starts
        rows = torch.arange(self.seq_len) + (self.kv_len - self.seq_len)  # [Nq] key positions
        return cuts[torch.searchsorted(cuts, rows, right=True) - 1]

    def input_bytes(self) -> int:
        """Bytes held by ``q, k, v`` (and, with gradients, their gradients and the output's)."""
        elem = torch.empty((), dtype=self.torch_dtype).element_size()
        q_elems = self.batch * self.heads * self.seq_len * self.head_dim
        kv_elems = self.batch * self.kv_heads * self.kv_len * (self.head_dim + (0 if self.latent else self.dv))
        return (q_elems + kv_elems) * elem
