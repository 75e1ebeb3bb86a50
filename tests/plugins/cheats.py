"""Implementations that claim more than they compute: each must be found out.

* ``zeros_own_reference`` declares itself exact, returns zeros, and supplies a ``reference=``
  that returns zeros too: an exact claim is judged against the case, so it is ``inaccurate``.
* ``ZerosClass`` is the same as a class overriding ``reference()``.
* ``shifted_window`` declares a window and computes a *shifted* window (keys ``p - W + 2 .. p + 1``
  under causal... that is, one key late), with its own reference of the same shifted function:
  judged against the case's window it is ``inaccurate``, and its reference is reported as another
  function.
"""

from __future__ import annotations

import torch

from attnbench import Implementation, Problem, register

Tensor = torch.Tensor


def _zeros(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
    return torch.zeros_like(q)


@register("zeros_own_reference", reference=_zeros)
def zeros_own_reference(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
    """Returns zeros, and claims zeros are the answer."""
    return torch.zeros_like(q)


@register("zeros_class")
class ZerosClass(Implementation):
    description = "returns zeros; its reference() says zeros"
    devices = ("cpu",)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return torch.zeros_like(q)

    def reference(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem, rows: Tensor | None = None) -> Tensor:
        out = torch.zeros(q.shape, dtype=torch.float64)
        return out if rows is None else out[:, :, rows]


def _shifted(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, window: int) -> Tensor:
    """Window attention with the band one key late: keys ``p - W + 2 .. p + 1`` (causal)."""
    nq, nk = q.shape[-2], k.shape[-2]
    p = torch.arange(nq)[:, None] + nk - nq  # [Nq, 1]
    j = torch.arange(nk)[None, :]  # [1, Nk]
    keep = (j <= p + 1) & (j > p + 1 - window)  # [Nq, Nk]
    scores = (q @ k.transpose(-1, -2)) * scale  # [B, H, Nq, Nk]
    return torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1) @ v


@register("shifted_window", features=("causal", "window"), requires=("window", "causal"), reference=_shifted)
def shifted_window(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, window: int) -> Tensor:
    """A causal window one key late, with a reference of its own that agrees with it."""
    return _shifted(q, k, v, causal=causal, scale=scale, window=window)
