"""Check an implementation against the correctness contract on one problem.

Used by the worker (every measured record carries its error) and by the tests (every exact
implementation must pass). The comparator is PyTorch's SDPA computing the same pattern in the
same dtype; the reference is float64 on the CPU (:mod:`attnbench.reference`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from attnbench.accuracy import Verdict, judge_approximate, judge_exact, max_abs_diff
from attnbench.contract import Implementation
from attnbench.problem import Problem
from attnbench.reference import sample_rows, softmax_attention
from torch.nn.attention import SDPBackend, sdpa_kernel

Tensor = torch.Tensor


def sdpa_with_pattern(q: Tensor, k: Tensor, v: Tensor, problem: Problem, rows: Tensor | None = None) -> Tensor:
    """PyTorch's plain SDPA (its math back end, the same on every device) given the problem's
    pattern as a boolean mask, for the query ``rows`` given (all when None): rows are
    independent, so a sample is exact."""
    pattern = problem.pattern
    if rows is not None:
        q = q[:, :, rows.to(q.device)]  # [B, H, R, D]
    if pattern.is_full:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, scale=problem.scale, enable_gqa=problem.gqa)
    mask = pattern.mask(problem.seq_len, problem.kv_len, device=q.device, rows=rows)  # [R, Nk]
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=problem.scale, enable_gqa=problem.gqa)
    empty = ~mask.any(dim=-1)  # [R] rows that see no key: 0 by convention, whatever the kernel gives
    return out.masked_fill(empty[:, None], 0.0) if bool(empty.any()) else out


@dataclass
class CheckResult:
    """The verdicts of one check: the output first, then dq, dk, dv when gradients were checked."""

    verdicts: list[Verdict] = field(default_factory=list)
    rows: int = 0  # query rows compared
    full_max_abs_err: float | None = None  # approximations: distance from softmax attention
    full_rel_err: float | None = None

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    @property
    def output(self) -> Verdict:
        return self.verdicts[0]

    def failures(self) -> str:
        return "; ".join(v.explain() for v in self.verdicts if not v.ok)


def _grads(
    fn: Callable[[Tensor, Tensor, Tensor], Tensor], q: Tensor, k: Tensor, v: Tensor, dout: Tensor
) -> list[Tensor]:
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = fn(*leaves)
    out.backward(dout.to(out.dtype))
    return [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves]


def check(
    impl: Implementation,
    problem: Problem,
    *,
    fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    seed: int = 0,
    max_rows: int = 256,
    grads: bool | None = None,
    inputs: tuple[Tensor, Tensor, Tensor] | None = None,
) -> CheckResult:
    """Run ``impl`` on seeded inputs and judge it.

    ``fn`` is the prepared call (``impl.prepare(problem)`` when None). Outputs are compared on a
    seeded sample of at most ``max_rows`` query rows (exact for those rows). Gradients are
    checked when ``grads`` is true (default: when the problem's mode needs them); they need the
    full reference and are meant for small problems. ``inputs`` reuses tensors already made
    with ``problem.make_inputs(seed)``.
    """
    fn = fn or impl.prepare(problem)
    q, k, v = inputs or problem.make_inputs(seed)  # [B, H, Nq, D], [B, Hkv, Nk, D] x2
    rows = sample_rows(problem.seq_len, max_rows, seed)
    with torch.no_grad():
        out = fn(q, k, v)  # [B, H, Nq, D]
    if tuple(out.shape) != tuple(q.shape):
        raise ValueError(f"output shape {tuple(out.shape)} differs from the query's {tuple(q.shape)}")
    picked = out if rows is None else out[:, :, rows.to(out.device)]
    ref = impl.reference(q, k, v, problem, rows=rows)  # [B, H, R, D] float64
    result = CheckResult(rows=problem.seq_len if rows is None else len(rows))
    if impl.exact:
        with torch.no_grad():
            comp = sdpa_with_pattern(q, k, v, problem, rows=rows)  # [B, H, R, D]
        result.verdicts.append(judge_exact(picked, ref, comp, problem.dtype))
    else:
        result.verdicts.append(judge_approximate(picked, ref, problem.dtype))
        full = softmax_attention(q, k, v, problem, rows=rows)
        result.full_max_abs_err = max_abs_diff(picked, full)
        scale = float(full.abs().max()) or 1.0
        result.full_rel_err = result.full_max_abs_err / scale
    if grads if grads is not None else problem.needs_grad:
        result.verdicts.extend(_check_grads(impl, fn, problem, q, k, v, seed))
    return result


def _check_grads(
    impl: Implementation,
    fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    problem: Problem,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    seed: int,
) -> list[Verdict]:
    gen = torch.Generator().manual_seed(seed + 1)
    dout = torch.randn(q.shape, generator=gen).to(q.device)  # [B, H, Nq, D]
    got = _grads(fn, q, k, v, dout)
    q64, k64, v64 = (t.detach().to("cpu", torch.float64) for t in (q, k, v))
    ref = _grads(lambda a, b, c: impl.reference(a, b, c, problem), q64, k64, v64, dout.cpu())
    verdicts = []
    if impl.exact:
        comp = _grads(lambda a, b, c: sdpa_with_pattern(a, b, c, problem), q, k, v, dout)
        for name, g, r, c in zip(("dq", "dk", "dv"), got, ref, comp, strict=True):
            verdicts.append(judge_exact(g, r, c, problem.dtype, what=name))
    else:
        for name, g, r in zip(("dq", "dk", "dv"), got, ref, strict=True):
            verdicts.append(judge_approximate(g, r, problem.dtype, what=name))
    return verdicts
