"""The correctness contract: how close an output (or a gradient) must be to the float64 reference.

**Exact implementations** meet FlashAttention's test criterion row by row: for every row ``i``
of the compared tensor (a query row of the output or of ``dq``, a key row of ``dk`` or ``dv``)

    max_d |out_i − ref_i|  ≤  2 · max_d |comparator_i − ref_i|  +  atol_i

where the comparator is the plain computation of the same case in the same dtype (scores and
probabilities rounded to the dtype, products accumulated in float32: the "PyTorch
implementation in the same low precision" of FlashAttention's tests), and

    atol_i = 2·ulp(max_d |ref_i|)  +  8·ε_acc · max_d |terms_i|

The first term is twice the rounding error of storing the row in the dtype (FlashAttention 3's
tests use twice a rounding error too). The second allows for summing in another order: a row of
the output is a sum ``Σ_j p_ij v_j`` whose terms can be much larger than the sum (the output of
random inputs shrinks as ``1/√N`` while the values do not), and its rounding error follows the
terms, ``|terms_i| = Σ_j p_ij |v_j|`` (likewise for the gradients), at the accumulation dtype's
epsilon ``ε_acc`` (float32 for every dtype but float64). Every term follows the size of the case:
a fixed atol — 0.016 in bfloat16 — grows relative to shrinking outputs until a softmax scale 5%
wrong passes; a bound tied to each row's magnitudes does not. A floor of a sixteenth of an ulp at
the tensor's largest magnitude keeps rows whose exact value is zero from demanding exact zeros.

**Approximations** are held to their own definition with a tolerance relative to the tensor's
magnitude (the implementation may declare its own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor

#: Relative tolerance for approximations against their own definition, by dtype.
APPROX_RTOL: dict[str, float] = {"float64": 1e-9, "float32": 1e-4, "float16": 5e-3, "bfloat16": 4e-2}
#: Mantissa bits of each dtype (the spacing of numbers in [1, 2) is 2**-bits).
MANTISSA_BITS: dict[str, int] = {"float64": 52, "float32": 23, "float16": 10, "bfloat16": 7}


@dataclass(frozen=True)
class Verdict:
    """The result of one accuracy check (the output, dq, dk or dv)."""

    ok: bool
    max_abs_err: float
    rel_err: float  # max_abs_err / max|ref|
    bound: float  # the bound of the row that came closest to (or furthest past) its own
    what: str = "output"

    def explain(self) -> str:
        return f"{self.what}: max|out - ref| = {self.max_abs_err:.3g} exceeds the bound {self.bound:.3g}"


def ulp(magnitude: Tensor, dtype: str) -> Tensor:
    """The spacing of ``dtype``'s numbers at each ``magnitude`` (float64, elementwise)."""
    bits = MANTISSA_BITS.get(dtype, 23)
    tiny = torch.finfo(torch.float64).tiny
    exponent = torch.floor(torch.log2(magnitude.clamp(min=tiny)))
    return torch.pow(2.0, exponent - bits)


def _rows_of(x: Tensor) -> Tensor:
    """``[..., rows, D]`` in float64 on the CPU as ``[n, D]``."""
    x = x.detach().to("cpu", torch.float64)
    return x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x.reshape(-1, 1)


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    """``max|a - b|`` in float64; NaN if either holds a NaN or an infinity."""
    diff = (a.detach().to("cpu", torch.float64) - b.detach().to("cpu", torch.float64)).abs()
    if diff.numel() == 0:
        return 0.0
    if not torch.isfinite(diff).all():
        return float("nan")
    return float(diff.max())


def _scale(ref: Tensor) -> float:
    return float(ref.detach().abs().max()) if ref.numel() else 0.0


#: Units of the accumulation dtype's epsilon allowed per unit of the summed terms' magnitude.
REORDER_EPS = 8.0


def accumulation_eps(dtype: str) -> float:
    return float(torch.finfo(torch.float64 if dtype == "float64" else torch.float32).eps)


def judge_exact(
    out: Tensor, ref: Tensor, comparator: Tensor, dtype: str, what: str = "output", terms: Tensor | None = None
) -> Verdict:
    """Row-wise ``max|out − ref| ≤ 2·max|comparator − ref| + atol`` (see the module); ``terms`` is
    the magnitude of what each element sums (``P|V|`` for the output), shaped like ``ref``."""
    o, r, c = _rows_of(out), _rows_of(ref), _rows_of(comparator)
    if o.shape != r.shape:
        raise ValueError(f"{what}: shape {tuple(out.shape)} differs from the reference's {tuple(ref.shape)}")
    if o.numel() == 0:
        return Verdict(True, 0.0, 0.0, 0.0, what)
    err = (o - r).abs().amax(dim=-1)  # [n]
    magnitude = r.abs().amax(dim=-1)  # [n]
    floor = float(ulp(torch.tensor(_scale(r), dtype=torch.float64), dtype)) / 16
    bound = 2.0 * (c - r).abs().amax(dim=-1) + 2.0 * ulp(magnitude, dtype) + floor  # [n]
    if terms is not None:
        bound = bound + REORDER_EPS * accumulation_eps(dtype) * _rows_of(terms).abs().amax(dim=-1)
    worst_err = float(err.max()) if bool(torch.isfinite(err).all()) else math.nan
    if math.isnan(worst_err):
        return Verdict(False, math.nan, math.nan, float(bound.max()), what)
    ratio = err / bound  # [n] (bound > 0 everywhere thanks to the floor)
    worst = int(ratio.argmax())
    ok = bool((err <= bound).all())
    scale = _scale(r)
    return Verdict(ok, worst_err, worst_err / scale if scale > 0 else worst_err, float(bound[worst]), what)


def judge_approximate(out: Tensor, ref: Tensor, dtype: str, what: str = "output", rtol: float | None = None) -> Verdict:
    """``max|out − ref| ≤ rtol·max|ref| + 2·ulp(max|ref|)`` for an approximation against its own
    definition; ``rtol`` defaults to :data:`APPROX_RTOL` for the dtype."""
    err = max_abs_diff(out, ref)
    scale = _scale(ref)
    tol = APPROX_RTOL.get(dtype, 1e-4) if rtol is None else rtol
    bound = tol * scale + 2.0 * float(ulp(torch.tensor(scale, dtype=torch.float64), dtype))
    return Verdict(err <= bound, err, err / scale if scale > 0 else err, bound, what)  # NaN compares False


def relative_distance(out: Tensor, ref: Tensor) -> float:
    """``max|out − ref| / max|ref|``: how far an output is from another, relative to its size."""
    scale = _scale(ref)
    err = max_abs_diff(out, ref)
    return err / scale if scale > 0 else err
