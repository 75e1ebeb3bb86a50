"""``forward``: one call computing the output, no gradients kept."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from attnbench.case.modes.base import AttentionFn, Bench, Inputs, Mode, same_shape, tensor_bytes

if TYPE_CHECKING:
    from attnbench.case.problem import Problem
    from attnbench.measure.verify import Outputs


class ForwardBench(Bench):
    """``fn(q, k, v)`` on the case's own tensors, timed and judged alike."""

    def __init__(self, fn: AttentionFn, inputs: Inputs) -> None:
        q, k, v = inputs  # [B, H, Nq, D], [B, Hkv, Nk, D] x2

        def forward() -> object:
            with torch.no_grad():
                return fn(q, k, v)

        super().__init__(forward, inputs)
        self.q = q

    def first(self) -> None:
        out = self.call()
        same_shape(out, self.q)  # type: ignore[arg-type]

    def check(self, rows: torch.Tensor) -> Outputs:
        from attnbench.measure.verify import Outputs

        out = self.call()  # [B, H, Nq, D]
        assert isinstance(out, torch.Tensor)
        same_shape(out, self.q)
        return Outputs(out[:, :, rows.to(out.device)].detach().cpu())


class Forward(Mode):
    name = "forward"

    def bench(self, fn: AttentionFn, problem: Problem, inputs: Inputs) -> Bench:
        return ForwardBench(fn, inputs)

    def io_bytes(self, problem: Problem) -> float:
        q, k, v = tensor_bytes(problem)
        return 2 * q + k + v  # read q, k, v; write the output (shaped like q)
