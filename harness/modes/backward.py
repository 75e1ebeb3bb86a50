"""``backward``: the backward pass alone, through a forward graph built once outside the timing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnbench.modes.base import AttentionFn, Call, Inputs, Mode, leaves, output_gradient, tensor_bytes

if TYPE_CHECKING:
    from attnbench.problem import Problem


class Backward(Mode):
    name = "backward"
    needs_grad = True
    flops_factor = 2.5
    gradients = True
    memory_factor = 2.0

    def timed_call(self, fn: AttentionFn, problem: Problem, inputs: Inputs) -> Call:
        grads = leaves(inputs)
        out = fn(*grads)  # the forward graph, built once outside the timing
        dout = output_gradient(problem, out)  # [B, H, Nq, D]

        def backward() -> object:
            for t in grads:
                t.grad = None
            out.backward(dout, retain_graph=True)
            return grads[0].grad

        return backward

    def io_bytes(self, problem: Problem) -> float:
        q, k, v = tensor_bytes(problem)
        return 3 * q + k + v + q + k + v  # read q, k, v, out, dout; write dq, dk, dv
