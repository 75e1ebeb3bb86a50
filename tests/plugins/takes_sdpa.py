"""A plugin file that registers a name already taken by a built-in: loading it is an error."""

from __future__ import annotations

import torch

from attnbench import register


@register("sdpa")
def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float) -> torch.Tensor:
    return q
