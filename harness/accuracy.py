"""The correctness contract: how close an output must be to the float64 reference.

Exact implementations pass FlashAttention's own criterion: the error of the output against a
float64 reference may be at most twice the error of PyTorch's SDPA run in the same dtype, plus a
small absolute tolerance. Approximations are held to their own definition with a tolerance that
scales with the dtype's precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor

#: Absolute slack added to the bound, by dtype (covers reductions ordered differently).
ATOL: dict[str, float] = {"float64": 1e-10, "float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}
#: Relative tolerance for approximations against their own definition, by dtype.
APPROX_RTOL: dict[str, float] = {"float64": 1e-9, "float32": 1e-4, "float16": 5e-3, "bfloat16": 4e-2}


@dataclass(frozen=True)
class Verdict:
    """The result of one accuracy check."""

    ok: bool
    max_abs_err: float
    rel_err: float  # max_abs_err / max|ref|
    bound: float
    what: str = "output"

    def explain(self) -> str:
        return f"{self.what}: max|out - ref| = {self.max_abs_err:.3g} exceeds the bound {self.bound:.3g}"


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    """``max|a - b|`` in float64; NaN if either holds a NaN or an infinity."""
    diff = (a.detach().to("cpu", torch.float64) - b.detach().to("cpu", torch.float64)).abs()
    if diff.numel() == 0:
        return 0.0
    if not torch.isfinite(diff).all():
        return float("nan")
    return float(diff.max())


def _rel(err: float, ref: Tensor) -> float:
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return err / scale if scale > 0 else err


def judge_exact(out: Tensor, ref: Tensor, comparator: Tensor, dtype: str, what: str = "output") -> Verdict:
    """``max|out − ref| ≤ 2·max|comparator − ref| + atol`` (FlashAttention's test criterion),
    where ``comparator`` is PyTorch's SDPA computing the same pattern in the same dtype."""
    err = max_abs_diff(out, ref)
    bound = 2.0 * max_abs_diff(comparator, ref) + ATOL.get(dtype, 1e-5)
    return Verdict(err <= bound, err, _rel(err, ref), bound, what)  # NaN compares False


def judge_approximate(out: Tensor, ref: Tensor, dtype: str, what: str = "output") -> Verdict:
    """``max|out − ref| ≤ rtol·max|ref| + atol`` for an approximation against its own definition."""
    err = max_abs_diff(out, ref)
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    bound = APPROX_RTOL.get(dtype, 1e-4) * scale + ATOL.get(dtype, 1e-5)
    return Verdict(err <= bound, err, _rel(err, ref), bound, what)
