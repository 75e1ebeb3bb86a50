"""The correctness contract: how close an output (or a gradient) must be to the float64 reference.

**Exact implementations** meet FlashAttention's test criterion, applied as FlashAttention's tests
apply it: one maximum per tensor (the output, ``dq``, ``dk``, ``dv``),

    max|out − ref|  ≤  2 · max|plain − ref|  +  atol

where ``ref`` is the float64 reference rounded to the case's dtype (FlashAttention's
``attention_ref`` returns its float32 result in the inputs' dtype), and ``plain`` is "the PyTorch
implementation in the same low precision" of its tests (``attention_ref(upcast=False,
reorder_ops=True)``): every product's result rounded to the dtype, forward and backward, the
scale applied to the keys, the softmax backward taken from the rounded probabilities
(:func:`attnbench.measure.verify.comparator`). The atol is FlashAttention's
``2·max|(ref + 0.3 − 0.3) − ref|`` in the dtype with its 0.3 replaced by the tensor's own largest
magnitude, so that it scales with the tensor (a small key gradient is not excused by an atol
sized for outputs near 1), plus an allowance for float32 accumulation in another order,
``8·ε(float32)·max|terms|`` (``|terms|`` the magnitude of what each element sums: ``P|V|`` for the
output), which matters only in float32.

Measured on this project's two-core machine (``benchmarks/criterion_sweep.py``, 718 checks: 20
seeds × bfloat16 and float16 × full and causal × forward and forward+backward at N = 1K and 4K,
and bfloat16 at 16K): no flag on PyTorch's math back end; two on its CPU flash kernel, both in the
value gradient (1.31× the bound in float16 at 4K causal, 1.19× in bfloat16 at 16K full) — a
finding about that kernel's backward; while the criterion catches a softmax scale 5% wrong at
N = 8192 and a key gradient 5% wrong at N = 4096. A row-by-row bound against the float64 values,
the criterion before, flagged PyTorch's CPU flash kernel on causal bfloat16 gradients in 8 of 20
seeds at N = 1024: finer than its source, it fired on a correct kernel.

**Approximations** are held to their own definition with a tolerance relative to the tensor's
magnitude (the implementation may declare its own).

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
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
#: The dtypes a case can be computed in.
LOW_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
#: FlashAttention's tests allow twice the error of the plain computation in the same dtype.
PLAIN_FACTOR = 2.0
#: Units of the accumulation dtype's epsilon allowed per unit of the summed terms' magnitude.
REORDER_EPS = 8.0


@dataclass(frozen=True)
class Verdict:
    """The result of one accuracy check (the output, dq, dk or dv)."""

    ok: bool
    max_abs_err: float
    rel_err: float  # max_abs_err / max|ref|
    bound: float
    what: str = "output"
    plain_err: float | None = None  # the plain computation's error in the same dtype (exact implementations)

    def explain(self) -> str:
        plain = "" if self.plain_err is None else f" (the plain computation's error {self.plain_err:.3g})"
        return f"{self.what}: max|out - ref| = {self.max_abs_err:.3g} exceeds the bound {self.bound:.3g}{plain}"

    def figures(self) -> list[object]:
        """``[what, error, plain error, bound]`` as the record keeps them."""
        return [self.what, self.max_abs_err, self.plain_err, self.bound]


def ulp(magnitude: Tensor, dtype: str) -> Tensor:
    """The spacing of ``dtype``'s numbers at each ``magnitude`` (float64, elementwise)."""
    bits = MANTISSA_BITS.get(dtype, 23)
    tiny = torch.finfo(torch.float64).tiny
    exponent = torch.floor(torch.log2(magnitude.clamp(min=tiny)))
    return torch.pow(2.0, exponent - bits)


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


def accumulation_eps(dtype: str) -> float:
    return float(torch.finfo(torch.float64 if dtype == "float64" else torch.float32).eps)


def rounded(ref: Tensor, dtype: str) -> Tensor:
    """The float64 reference rounded to the case's dtype (held as float64 values on the CPU)."""
    low = LOW_DTYPES.get(dtype, torch.float32)
    return ref.detach().to("cpu", torch.float64).to(low).to(torch.float64)


def fa_atol(ref: Tensor, dtype: str) -> float:
    """FlashAttention's ``2·max|(ref + c − c) − ref|`` computed in the dtype, with ``c`` the
    tensor's own largest magnitude where its tests use 0.3 (sized for outputs near 1): twice the
    dtype's rounding error at the tensor's scale. ``ref`` is already rounded to the dtype."""
    if not ref.numel():
        return 0.0
    low = LOW_DTYPES.get(dtype, torch.float32)
    r = ref.to(low)
    c = torch.tensor(_scale(ref), dtype=low)
    return 2.0 * float(((r + c) - c).to(torch.float64).sub(ref).abs().max())


def judge_exact(
    out: Tensor, ref: Tensor, plain: Tensor, dtype: str, what: str = "output", terms: Tensor | None = None
) -> Verdict:
    """``max|out − ref| ≤ 2·max|plain − ref| + atol`` over the whole tensor (see the module), with
    ``ref`` the float64 reference rounded to ``dtype``; ``terms`` is the magnitude of what each
    element sums (``P|V|`` for the output), shaped like ``ref``. A floor of a sixteenth of an ulp
    at the tensor's largest magnitude keeps a tensor whose exact value is zero somewhere from
    demanding exact zeros of a reordered sum."""
    if tuple(out.shape) != tuple(ref.shape):
        raise ValueError(f"{what}: shape {tuple(out.shape)} differs from the reference's {tuple(ref.shape)}")
    if out.numel() == 0:
        return Verdict(True, 0.0, 0.0, 0.0, what, 0.0)
    r = rounded(ref, dtype)
    err = max_abs_diff(out, r)
    plain_err = max_abs_diff(plain, r)
    scale = _scale(r)
    floor = float(ulp(torch.tensor(scale, dtype=torch.float64), dtype)) / 16
    bound = PLAIN_FACTOR * (plain_err if math.isfinite(plain_err) else 0.0) + fa_atol(r, dtype) + floor
    if terms is not None and terms.numel():
        bound += REORDER_EPS * accumulation_eps(dtype) * _scale(terms)
    ok = math.isfinite(err) and err <= bound
    return Verdict(ok, err, err / scale if scale > 0 else err, bound, what, plain_err)


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
