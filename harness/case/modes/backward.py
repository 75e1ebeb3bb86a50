"""``backward``: the backward pass alone, through a forward graph built once outside the timing."""

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


class BackwardBench(Bench):
    """The backward pass through one forward graph: timed with the seeded output gradient, judged
    with the check's gradient written into the same buffer and propagated through the same graph."""

    def __init__(self, fn: AttentionFn, problem: Problem, inputs: Inputs) -> None:
        self.problem = problem
        self.grads = leaves(inputs)
        self.out = fn(*self.grads)  # [B, H, Nq, D]: the forward graph, built once outside the timing
        same_shape(self.out, inputs[0])
        self.dout = output_gradient(problem, self.out)  # [B, H, Nq, D]: one buffer, refilled for the check

        def backward() -> object:
            for t in self.grads:
                t.grad = None
            self.out.backward(self.dout, retain_graph=True)
            return self.grads[0].grad

        super().__init__(backward)  # scrambling is the output gradient's: the check propagates another

    def check(self, rows: torch.Tensor) -> Outputs:
        from attnbench.measure.verify import gradient_outputs

        full, on_rows = check_gradient(self.problem, self.out, rows)
        with torch.no_grad():
            self.dout.copy_(full)
        self.call()
        return gradient_outputs(self.out, self.grads, rows, on_rows)


class Backward(Mode):
    name = "backward"
    needs_grad = True
    flops_factor = 2.5
    gradients = True
    memory_factor = 2.0

    def bench(self, fn: AttentionFn, problem: Problem, inputs: Inputs) -> Bench:
        return BackwardBench(fn, problem, inputs)

    def io_bytes(self, problem: Problem) -> float:
        q, k, v = tensor_bytes(problem)
        return 3 * q + k + v + q + k + v  # read q, k, v, out, dout; write dq, dk, dv
