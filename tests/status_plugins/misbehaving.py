"""Deliberately broken implementations: each produces one failure status in a sweep.

Loaded with ``--plugin`` by the engine tests. Every one computes correct attention first where
that matters, so that only the intended failure shows.
"""

from __future__ import annotations

import ctypes
import time

import torch
import torch.nn.functional as F

from attnbench import Availability, Implementation, Problem, register

Tensor = torch.Tensor


def _sdpa(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


@register("bad_segfault", description="dereferences a null pointer")
def bad_segfault(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, **options: object) -> Tensor:
    ctypes.string_at(0)  # SIGSEGV
    return q


@register("bad_hang", description="never returns")
def bad_hang(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, **options: object) -> Tensor:
    while True:
        time.sleep(0.05)


@register("bad_alloc", description="allocates without limit")
def bad_alloc(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, **options: object) -> Tensor:
    hoard = []
    while True:
        hoard.append(torch.ones(256 * 1024 * 1024 // 4))  # 256 MiB a step, touched


@register("bad_nan", description="returns NaN")
def bad_nan(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, **options: object) -> Tensor:
    return torch.full_like(q, float("nan"))


@register("bad_shape", description="returns the wrong shape")
def bad_shape(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, **options: object) -> Tensor:
    return _sdpa(q, k, v, causal, scale)[..., :-1]


@register("bad_raise", description="raises")
def bad_raise(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, **options: object) -> Tensor:
    raise RuntimeError("deliberate failure from bad_raise")


@register("good_sdpa", description="correct: PyTorch SDPA", features=("causal", "gqa", "cross", "backward"))
def good_sdpa(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, **options: object) -> Tensor:
    return _sdpa(q, k, v, causal, scale)


@register("sleep_20ms", description="correct, and sleeps 20 ms per call", features=("causal",))
def sleep_20ms(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, **options: object) -> Tensor:
    time.sleep(0.020)
    return _sdpa(q, k, v, causal, scale)


@register("bad_unavailable")
class NeedsMissingHardware(Implementation):
    """Declares itself unavailable, as a library missing its device would."""

    description = "needs hardware this machine lacks"

    def available(self) -> Availability:
        return Availability.no("needs a TPU, and this machine has none")

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        raise AssertionError("an unavailable implementation must never run")


@register("only_float64", description="declares float64 only", dtypes=("float64",))
def only_float64(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, **options: object) -> Tensor:
    return _sdpa(q, k, v, causal, scale)


@register("huge_estimate")
class HugeEstimate(Implementation):
    """Correct, but predicts more memory than any budget: never started."""

    description = "predicts an enormous footprint"

    def memory_estimate(self, problem: Problem) -> int | None:
        return 1 << 50

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        raise AssertionError("a case predicted out of memory must never run")


def _raising_reference(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, **options: object) -> Tensor:
    raise RuntimeError("deliberate failure from bad_reference's reference()")


@register(
    "bad_reference", exact=False, reference=_raising_reference, description="an approximation whose reference() raises"
)
def bad_reference(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, **options: object) -> Tensor:
    return _sdpa(q, k, v, causal, scale)
