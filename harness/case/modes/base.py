"""The interface every mode implements (see :mod:`attnbench.case.modes`), and the bench it builds.

A :class:`Bench` is one implementation's call on one case's inputs: the call the timing loop
repeats, and the accuracy check made afterwards **through the same call on the same tensors**.
Before the first call the inputs are *scrambled* in place (negated: other values of the same
distribution); after timing they are restored exactly, and the check calls the implementation
once more on those very tensors with the case's seeded values. So the call that is judged is the
call that was timed: an implementation that keeps the output it computed for tensors it was
handed before, and returns it when it sees them again, gives the scrambled inputs' answer and is
found out, while honest set-up (a mask or features built once in ``prepare``) is untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from attnbench.case.problem import Problem
    from attnbench.measure.verify import CheckResult, Outputs
    from attnbench.plugins.contract import Implementation

Tensor = torch.Tensor
Call = Callable[[], object]
Inputs = tuple[Tensor, Tensor, Tensor]
AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class Bench:
    """One implementation's timed call and its judged call on the same tensors (see the module).

    ``call`` is the zero-argument call the timing loop repeats; ``first()`` makes the first call
    (the warm-up, where a wrong output shape is found); ``scramble()`` and ``restore()`` negate the
    inputs in place (an involution: restoring gives back the seeded values bit for bit);
    ``check(rows)`` is one more call on the same tensors whose output (and gradients) on the
    sampled ``rows`` are kept for the accuracy check."""

    def __init__(self, call: Call, held: Sequence[Tensor] = ()) -> None:
        self.call = call
        self.held = list(held)  # the tensors scrambled in place: every input the call reads
        self.scrambled = False

    def first(self) -> None:
        self.call()

    def scramble(self) -> None:
        if not self.scrambled:
            self._negate()
            self.scrambled = True

    def restore(self) -> None:
        if self.scrambled:
            self._negate()
            self.scrambled = False

    def _negate(self) -> None:
        with torch.no_grad():
            for t in self.held:
                t.neg_()

    def check(self, rows: Tensor) -> Outputs:
        raise NotImplementedError


class Mode:
    """One kind of timed call."""

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

    def make_inputs(self, problem: Problem) -> Any:
        """The seeded inputs of one call (``q, k, v`` unless the mode says otherwise)."""
        return problem.make_inputs()

    def prepare(self, impl: Implementation, problem: Problem, inputs: Any) -> Callable[..., torch.Tensor]:
        """The implementation's set-up for this mode, outside the timing."""
        return impl.prepare(problem)

    def bench(self, fn: Callable[..., torch.Tensor], problem: Problem, inputs: Any) -> Bench:
        """The timed call and the judged call on the same tensors (set-up done here, outside the timing)."""
        raise NotImplementedError

    def timed_call(self, fn: Callable[..., torch.Tensor], problem: Problem, inputs: Any) -> Call:
        """The zero-argument call the timing loop repeats (its bench's call)."""
        return self.bench(fn, problem, inputs).call

    def pairs(self, problem: Problem) -> int:
        """(query, key) pairs one call computes, over the whole batch."""
        return problem.batch * problem.pattern.pairs(problem.seq_len, problem.kv_len)

    def dense_pairs(self, problem: Problem) -> int:
        return problem.batch * problem.seq_len * problem.kv_len

    def judge(
        self, impl: Implementation, problem: Problem, inputs: Any, got: Outputs, rows: torch.Tensor
    ) -> CheckResult:
        """The harness's half of the accuracy check (:mod:`attnbench.measure.verify`)."""
        from attnbench.measure.verify import judge

        return judge(impl, problem, inputs, got, rows)

    def io_bytes(self, problem: Problem) -> float:
        """The bytes one call must move at least: each input read once, each output written once."""
        raise NotImplementedError

    def checks(self) -> tuple[str, ...]:
        """The tensors the accuracy check compares."""
        return ("output", "dq", "dk", "dv") if self.gradients else ("output",)

    def __str__(self) -> str:
        return self.name


def tensor_bytes(problem: Problem) -> tuple[float, float, float]:
    """Bytes of ``q`` (and of the output, the same shape), of ``k`` and of ``v`` in the case's dtype."""
    elem = torch.empty((), dtype=problem.torch_dtype).element_size()
    q = problem.batch * problem.heads * problem.seq_len * problem.head_dim * elem
    kv = problem.batch * problem.kv_heads * problem.kv_len * problem.head_dim * elem
    return float(q), float(kv), float(kv)


def output_gradient(problem: Problem, like: Tensor) -> Tensor:
    """A seeded output gradient shaped like the output (the same for every implementation): the
    one the timed calls propagate."""
    gen = problem.generator(salt=1)
    return torch.randn(like.shape, generator=gen).to(like.device, like.dtype)  # [B, H, Nq, D]


def check_gradient(problem: Problem, like: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """The output gradient of the accuracy check: seeded values on the sampled ``rows``, zero
    elsewhere (so that ``dq`` on the rows and ``dk``, ``dv`` in full depend on those rows alone).
    Returns the full gradient ``[B, H, Nq, D]`` and its rows ``[B, H, R, D]`` (on the CPU)."""
    gen = problem.generator(salt=2)
    b, h, _, d = like.shape
    on_rows = torch.randn(b, h, len(rows), d, generator=gen).to(like.dtype)  # [B, H, R, D]
    full = torch.zeros_like(like)
    full[:, :, rows.to(like.device)] = on_rows.to(like.device)
    return full, on_rows


def leaves(inputs: Inputs) -> list[Tensor]:
    """Fresh ``q, k, v`` that require gradients."""
    return [t.detach().clone().requires_grad_(True) for t in inputs]  # [B, H(kv), N, D] each


def same_shape(out: Tensor, q: Tensor) -> None:
    """An output must be shaped like the query."""
    if tuple(out.shape) != tuple(q.shape):
        raise ValueError(f"output shape {tuple(out.shape)} differs from the query's {tuple(q.shape)}")
