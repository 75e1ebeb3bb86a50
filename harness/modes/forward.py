"""``forward``: one call computing the output, no gradients kept."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from attnbench.modes.base import AttentionFn, Call, Inputs, Mode, tensor_bytes

if TYPE_CHECKING:
    from attnbench.problem import Problem


class Forward(Mode):
    name = "forward"

    def timed_call(self, fn: AttentionFn, problem: Problem, inputs: Inputs) -> Call:
        q, k, v = inputs

        def forward() -> object:
            with torch.no_grad():
                return fn(q, k, v)

        return forward

    def io_bytes(self, problem: Problem) -> float:
        q, k, v = tensor_bytes(problem)
        return 2 * q + k + v  # read q, k, v; write the output (shaped like q)
