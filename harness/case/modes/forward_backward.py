"""``forward_backward``: a training step's attention, forward then backward, both timed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from attnbench.case.modes.base import (
    AttentionFn,
    Bench,
    Inputs,
    Mode,
    check_gradient,
    leaves,
    output_gradient,
    same_shape,
    tensor_bytes,
)

if TYPE_CHECKING:
    from attnbench.case.problem import Problem
    from attnbench.measure.verify import Outputs


class ForwardBackwardBench(Bench):
    """Forward and backward on one set of leaf tensors: timed on them scrambled with the seeded
    output gradient, judged on them restored with the check's gradient in the same buffer."""

    def __init__(self, fn: AttentionFn, problem: Problem, inputs: Inputs) -> None:
        self.problem = problem
        self.grads = leaves(inputs)  # [B, H(kv), N, D] each
        self.dout = output_gradient(problem, inputs[0])  # [B, H, Nq, D]: one buffer, refilled for the check

        def forward_backward() -> object:
            for t in self.grads:
                t.grad = None
            out = fn(*self.grads)
            out.backward(self.dout)
            return out

        super().__init__(forward_backward, self.grads)

    def first(self) -> None:
        out = self.call()
        same_shape(out, self.grads[0])  # type: ignore[arg-type]

    def check(self, rows: torch.Tensor) -> Outputs:
        from attnbench.measure.verify import gradient_outputs

        full, on_rows = check_gradient(self.problem, self.grads[0], rows)
        with torch.no_grad():
            self.dout.copy_(full)
        out = self.call()  # [B, H, Nq, D], the leaves' gradients filled
        assert isinstance(out, torch.Tensor)
        same_shape(out, self.grads[0])
        return gradient_outputs(out, self.grads, rows, on_rows)


class ForwardBackward(Mode):
    name = "forward_backward"
    needs_grad = True
    flops_factor = 3.5
    gradients = True
    memory_factor = 2.0

    def bench(self, fn: AttentionFn, problem: Problem, inputs: Inputs) -> Bench:
        return ForwardBackwardBench(fn, problem, inputs)

    def io_bytes(self, problem: Problem) -> float:
        q, k, v = tensor_bytes(problem)
        return (2 * q + k + v) + (3 * q + k + v + q + k + v)  # the forward's traffic, then the backward's
