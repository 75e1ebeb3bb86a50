"""The interface every mode implements (see :mod:`attnbench.modes`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from attnbench.contract import Implementation
    from attnbench.problem import Problem
    from attnbench.verify import CheckResult, Outputs

Tensor = torch.Tensor
Call = Callable[[], object]
Inputs = tuple[Tensor, Tensor, Tensor]
AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


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

    def timed_call(self, fn: Callable[..., torch.Tensor], problem: Problem, inputs: Any) -> Call:
        """The zero-argument call the timing loop repeats (set-up done here, outside it)."""
        raise NotImplementedError

    def pairs(self, problem: Problem) -> int:
        """(query, key) pairs one call computes, over the whole batch."""
        return problem.batch * problem.pattern.pairs(problem.seq_len, problem.kv_len)

    def dense_pairs(self, problem: Problem) -> int:
        return problem.batch * problem.seq_len * problem.kv_len

    def run_check(self, fn: Callable[..., torch.Tensor], problem: Problem, inputs: Any, rows: torch.Tensor) -> Outputs:
        """The implementation's half of the accuracy check (:mod:`attnbench.verify`)."""
        from attnbench.verify import run_implementation

        return run_implementation(fn, problem, inputs, rows, self.gradients)

    def judge(
        self, impl: Implementation, problem: Problem, inputs: Any, got: Outputs, rows: torch.Tensor
    ) -> CheckResult:
        """The harness's half of the accuracy check (:mod:`attnbench.verify`)."""
        from attnbench.verify import judge

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
    """A seeded output gradient shaped like the output (the same for every implementation)."""
    gen = problem.generator(salt=1)
    return torch.randn(like.shape, generator=gen).to(like.device, like.dtype)  # [B, H, Nq, D]


def leaves(inputs: Inputs) -> list[Tensor]:
    """Fresh ``q, k, v`` that require gradients."""
    return [t.detach().clone().requires_grad_(True) for t in inputs]  # [B, H(kv), N, D] each
