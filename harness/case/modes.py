"""Modes, declared once: what one timed call of a case computes, as data.

A mode says what differs between "a forward call", "a backward pass", "forward and backward" and
"a decode step against a KV cache": its inputs, whether it differentiates, the work it counts
relative to a forward pass, the bytes it must move, which tensors its accuracy check compares,
how much more memory than a forward call it keeps, and whether it is judged against the memory
bandwidth and reads a cache. Everything else *asks* a mode these things; nothing compares mode
names. How each mode's call is made, timed and judged lives with the measurement
(:mod:`attnbench.measure.bench`).

Layer ``case``: imports nothing of attnbench outside ``attnbench.case``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import torch

from attnbench.case.kvcache import KVCache, make_cache, parse_cache, valid_lengths
from attnbench.case.patterns import Pattern
from attnbench.case.variants import SOFTCAP_SPREAD

Tensor = torch.Tensor


class Problem(Protocol):
    """What a mode reads of a case (:class:`attnbench.case.problem.Problem` is one; declared here
    so that the declaration of modes does not import the case that holds a mode)."""

    @property
    def batch(self) -> int: ...

    @property
    def heads(self) -> int: ...

    @property
    def kv_heads(self) -> int: ...

    @property
    def softcap(self) -> float: ...

    @property
    def seq_len(self) -> int: ...

    @property
    def kv_len(self) -> int: ...

    @property
    def head_dim(self) -> int: ...

    @property
    def dv(self) -> int: ...

    @property
    def latent(self) -> bool: ...

    @property
    def device(self) -> str: ...

    @property
    def cache(self) -> str: ...

    @property
    def kv_lengths(self) -> str: ...

    @property
    def seed(self) -> int: ...

    @property
    def pattern(self) -> Pattern: ...

    @property
    def torch_dtype(self) -> torch.dtype: ...

    def make_inputs(self) -> tuple[Tensor, Tensor, Tensor]: ...

    def with_(self, **changes: Any) -> Any: ...


P = TypeVar("P", bound=Problem)
Call = Callable[[], object]
Inputs = tuple[Tensor, Tensor, Tensor]


class Mode:
    """One kind of timed call (see the module)."""

    name: ClassVar[str] = ""
    #: Whether the call differentiates (implementations must declare the ``backward`` feature).
    needs_grad: ClassVar[bool] = False
    #: FLOPs relative to one forward pass over the same pairs (FlashAttention's convention:
    #: backward 2.5 — 2.0 for its products, 0.5 for recomputation — forward+backward 3.5).
    flops_factor: ClassVar[float] = 1.0
    #: What the accuracy check compares, beyond the output.
    gradients: ClassVar[bool] = False
    #: Memory kept relative to a forward call (activations saved for the backward pass).
    memory_factor: ClassVar[float] = 1.0
    #: Judged by bytes per second against the memory bandwidth (else by FLOP/s against the
    #: matmul peak); its machine probe is then a memory sweep, not a matrix product.
    memory_bound: ClassVar[bool] = False
    #: New tokens attend to a KV cache (``cache`` and ``kv_lengths`` describe it).
    reads_cache: ClassVar[bool] = False

    def make_inputs(self, problem: Problem) -> Any:
        """The seeded inputs of one call (``q, k, v`` unless the mode says otherwise)."""
        return problem.make_inputs()

    def pairs(self, problem: Problem) -> int:
        """(query, key) pairs one call computes, over the whole batch."""
        return problem.batch * problem.pattern.pairs(problem.seq_len, problem.kv_len)

    def dense_pairs(self, problem: Problem) -> int:
        return problem.batch * problem.seq_len * problem.kv_len

    def io_bytes(self, problem: Problem) -> float:
        """The bytes one call must move at least: each input read once, each output written once."""
        raise NotImplementedError

    def checks(self) -> tuple[str, ...]:
        """The tensors the accuracy check compares."""
        return ("output", "dq", "dk", "dv") if self.gradients else ("output",)

    def __str__(self) -> str:
        return self.name


def tensor_bytes(problem: Problem) -> tuple[float, float, float, float]:
    """Bytes of ``q``, ``k``, ``v`` and the output in the case's dtype (values and the output
    have ``v_head_dim`` columns)."""
    elem = torch.empty((), dtype=problem.torch_dtype).element_size()
    rows_q, rows_kv = problem.batch * problem.heads * problem.seq_len, problem.batch * problem.kv_heads * problem.kv_len
    q, k = rows_q * problem.head_dim * elem, rows_kv * problem.head_dim * elem
    return float(q), float(k), float(rows_kv * problem.dv * elem), float(rows_q * problem.dv * elem)


class Forward(Mode):
    """One call computing the output, no gradients kept."""

    name = "forward"

    def io_bytes(self, problem: Problem) -> float:
        q, k, v, o = tensor_bytes(problem)
        return q + k + v + o  # read q, k, v; write the output


class Backward(Mode):
    """The backward pass alone, through a forward graph built once outside the timing."""

    name = "backward"
    needs_grad = True
    flops_factor = 2.5
    gradients = True
    memory_factor = 2.0

    def io_bytes(self, problem: Problem) -> float:
        q, k, v, o = tensor_bytes(problem)
        return q + k + v + 2 * o + q + k + v  # read q, k, v, out, dout; write dq, dk, dv


class ForwardBackward(Mode):
    """A training step's attention, forward then backward, both timed."""

    name = "forward_backward"
    needs_grad = True
    flops_factor = 3.5
    gradients = True
    memory_factor = 2.0

    def io_bytes(self, problem: Problem) -> float:
        q, k, v, o = tensor_bytes(problem)
        return (q + k + v + o) + (q + k + v + 2 * o + q + k + v)  # the forward's traffic, then the backward's


@dataclass
class DecodeInputs:
    """One decode step's inputs: the new tokens' queries, keys and values, and the cache."""

    q: Tensor  # [B, H, S, D]
    k_new: Tensor  # [B, Hkv, S, D]
    v_new: Tensor  # [B, Hkv, S, D]
    cache: KVCache


class Decode(Mode):
    """One step of generation against a KV cache.

    Each call is one decode step: ``seq_len`` new query tokens (1, or a few for speculative
    decoding) append their keys and values to a preallocated cache of capacity ``kv_len`` and
    attend to every valid token of their sequence (:mod:`attnbench.case.kvcache`: uniform or
    ragged lengths, contiguous or paged layout). The new tokens are causal among themselves
    (bottom-right: the last one sees everything); a window, if any, counts back from each
    token's position. The same slots are written on every call, so the cache does not grow while
    it is timed. Its cost is reading the cache, so it is judged in bytes per second against the
    memory bandwidth; the FLOPs are counted too (the pairs of every sequence's own length)."""

    name = "decode"
    memory_bound = True
    reads_cache = True

    def make_inputs(self, problem: Problem) -> DecodeInputs:
        gen = torch.Generator().manual_seed(problem.seed)
        b, s, d, dv = problem.batch, problem.seq_len, problem.head_dim, problem.dv
        spread = problem.softcap / SOFTCAP_SPREAD if problem.softcap else 1.0  # as Problem.make_inputs
        q, k_new, v_new = (
            (torch.randn(b, h, s, dim, generator=gen) * factor).to(problem.device, problem.torch_dtype)
            for h, dim, factor in ((problem.heads, d, spread), (problem.kv_heads, d, 1.0), (problem.kv_heads, dv, 1.0))
        )  # [B, H, S, D], [B, Hkv, S, D], [B, Hkv, S, Dv]: the new tokens (queries spread for a soft-cap)
        if problem.latent:  # the values are the keys' first Dv columns (one latent per token)
            v_new = k_new[..., :dv]  # [B, Hkv, S, Dv], a view
        cache = make_cache(
            problem.batch, problem.kv_heads, problem.head_dim, problem.kv_len, problem.seq_len,
            page=parse_cache(problem.cache), lengths=problem.kv_lengths, seed=problem.seed,
            dtype=problem.torch_dtype, device=problem.device, v_head_dim=dv, latent=problem.latent,
        )  # fmt: skip
        return DecodeInputs(q, k_new, v_new, cache)

    def pairs(self, problem: Problem) -> int:
        return sum(problem.pattern.pairs(problem.seq_len, int(n)) for n in attended(problem))

    def io_bytes(self, problem: Problem) -> float:
        elem = torch.empty((), dtype=problem.torch_dtype).element_size()
        width = problem.head_dim + (0 if problem.latent else problem.dv)  # a key and a value (latent: one)
        kv_read = problem.kv_heads * width * int(attended(problem).sum())
        new = problem.batch * problem.kv_heads * problem.seq_len * width  # written
        q = problem.batch * problem.heads * problem.seq_len * (problem.head_dim + problem.dv)  # queries in, output out
        return float((kv_read + new + q) * elem)


FORWARD, BACKWARD, FORWARD_BACKWARD, DECODE = Forward(), Backward(), ForwardBackward(), Decode()
#: Every mode by name, in the order suites list them.
MODES: dict[str, Mode] = {m.name: m for m in (FORWARD, BACKWARD, FORWARD_BACKWARD, DECODE)}


def mode(name: str) -> Mode:
    """The mode called ``name``; an unknown name raises ValueError listing the known ones."""
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"unknown mode {name!r}; expected one of {list(MODES)}") from None


def attended(problem: Problem) -> Tensor:
    """``[B]``: the tokens each sequence of a decode step attends to after the step (seeded, as
    the cache has them)."""
    return valid_lengths(problem.batch, problem.seq_len, problem.kv_len, problem.kv_lengths, problem.seed)


def sequence_problem(problem: P, length: int) -> P:
    """Sequence ``b`` of a decode step as an ordinary forward (cross-attention) problem against
    its own ``length`` attended tokens (a latent cache's values passed as their own tensor, a view)."""
    sub: P = problem.with_(
        batch=1, kv_len=length, mode=FORWARD.name, cache="contiguous", kv_lengths="uniform", latent=False
    )
    return sub
