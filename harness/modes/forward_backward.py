"""``forward_backward``: a training step's attention, forward then backward, both timed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnbench.modes.base import AttentionFn, Call, Inputs, Mode, leaves, output_gradient, tensor_bytes

if TYPE_CHECKING:
    from attnbench.problem import Problem


class ForwardBackward(Mode):
    name = "forward_backward"
    needs_grad = True
    flops_factor = 3.5
    gradients = True
    memory_factor = 2.0

    def timed_call(self, fn: AttentionFn, problem: Problem, inputs: Inputs) -> Call:
        grads = leaves(inputs)
        dout = output_gradient(problem, inputs[0])  # [B, H, Nq, D]

        def forward_backward() -> object:
            for t in grads:
                t.grad = None
            fn(*grads).backward(dout)
            return grads[0].grad

        return forward_backward

    def io_bytes(self, problem: Problem) -> float:
        q, k, v = tensor_bytes(problem)
        return (2 * q + k + v) + (3 * q + k + v + q + k + v)  # the forward's traffic, then the backward's
