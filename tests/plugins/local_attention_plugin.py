"""lucidrains' ``local-attention`` package as an attnbench plugin (``pip install local-attention``).

Its ``LocalAttention`` with ``exact_windowsize=True`` and ``look_backward=1`` lets query ``i``
see keys ``i - window_size … i`` (causal), i.e. ``window_size + 1`` keys: attnbench's window
``W`` is ``window_size = W - 1``. The module is built once per case by ``setup=``, outside the
timing; ``autopad=True`` pads sequences that are not a multiple of the window.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attnbench import Problem, register

Tensor = torch.Tensor
OFF_BY_ONE = 0  # tests set 1 to plant the classic mistake, window_size = W


def build(problem: Problem) -> Callable[..., Tensor]:
    from local_attention import LocalAttention

    attend = LocalAttention(
        window_size=problem.window - 1 + OFF_BY_ONE,
        causal=True,
        look_backward=1,
        exact_windowsize=True,
        autopad=True,
        scale=problem.scale,
    )

    def run(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, window: int) -> Tensor:
        b, h, n, d = q.shape
        flat = [t.reshape(b * h, n, d) for t in (q, k, v)]  # [B·H, N, D]: heads as batch
        return attend(*flat).reshape(b, h, n, d)  # [B, H, N, D]

    return run


@register(
    "local_attention",
    description="lucidrains/local-attention, exact causal window",
    features=("causal", "window", "backward"),
    requires=("window", "causal"),
    dtypes=("float32",),
    setup=build,
)
def local_attention(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, window: int, problem: Problem
) -> Tensor:
    """Causal sliding-window attention from the local-attention package."""
    return build(problem)(q, k, v, causal=causal, scale=scale, window=window)
