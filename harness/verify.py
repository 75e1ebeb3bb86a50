"""Check an implementation against the correctness contract on one problem.

Two halves, so that the worker can time the implementation between them and keep the
harness's own work (the float64 reference) out of the implementation's budget:

1. :func:`run_implementation` — the implementation's own code: one call on seeded inputs, its
   output kept on a seeded sample of query rows; in modes with gradients, one backward pass with
   an output gradient that is zero outside those rows, its ``dq`` on the rows (and the largest
   ``dq`` elsewhere, which must be zero), ``dk`` and ``dv`` kept.
2. :func:`judge` — the harness's work: the float64 reference (:mod:`attnbench.reference`) of
   those rows, the comparator (:func:`comparator`: the plain computation in the case's dtype, on
   the same rows) and the verdicts (:mod:`attnbench.accuracy`). An exact implementation is always judged
   against the case's own function; an approximation against its own ``reference()``, with its
   distance from softmax attention and from uniform attention reported beside.

:func:`check` runs both, for the tests and ``attnbench check``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from attnbench.accuracy import Verdict, judge_approximate, judge_exact, max_abs_diff, relative_distance, ulp
from attnbench.contract import Implementation
from attnbench.problem import Problem
from attnbench.reference import (
    sample_rows,
    softmax_attention,
    softmax_attention_grads,
    softmax_attention_terms,
    uniform_attention,
)

Tensor = torch.Tensor
Inputs = tuple[Tensor, Tensor, Tensor]
#: Score elements the comparator computes at once (rows are batched to stay under it).
COMPARATOR_ELEMENTS = 1 << 25


@dataclass
class Outputs:
    """What the implementation produced for the check, on the CPU in its own dtype."""

    out: Tensor  # [B, H, R, D] the sampled rows of the output
    dout: Tensor | None = None  # [B, H, R, D] the output gradient on those rows (zero elsewhere)
    dq: Tensor | None = None  # [B, H, R, D]
    dq_elsewhere: float = 0.0  # max|dq| outside the sampled rows (exactly zero when correct)
    dk: Tensor | None = None  # [B, Hkv, Nk, D]
    dv: Tensor | None = None


@dataclass
class CheckResult:
    """The verdicts of one check: the output first, then dq, dk, dv when gradients were checked."""

    verdicts: list[Verdict] = field(default_factory=list)
    rows: int = 0  # query rows compared
    full_max_abs_err: float | None = None  # approximations: distance from softmax attention
    full_rel_err: float | None = None
    uniform_rel_err: float | None = None  # uniform attention's distance from softmax attention
    own_reference_differs: bool | None = None  # exact implementations with a reference() of their own
    note: str = ""

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    @property
    def output(self) -> Verdict:
        return self.verdicts[0]

    @property
    def checks(self) -> list[str]:
        return [v.what for v in self.verdicts]

    def failures(self) -> str:
        return "; ".join(v.explain() for v in self.verdicts if not v.ok)


def check_rows(problem: Problem, max_rows: int) -> Tensor:
    """The query rows a check compares: a seeded sample of ``max_rows`` (all when fewer)."""
    rows = sample_rows(problem.seq_len, max_rows, problem.seed)
    return torch.arange(problem.seq_len) if rows is None else rows


def run_implementation(
    fn: Callable[[Tensor, Tensor, Tensor], Tensor], problem: Problem, inputs: Inputs, rows: Tensor, grads: bool
) -> Outputs:
    """The implementation's half of the check (see the module docstring)."""
    q, k, v = inputs  # [B, H, Nq, D], [B, Hkv, Nk, D] x2
    index = rows.to(q.device)
    if not grads:
        with torch.no_grad():
            out = fn(q, k, v)  # [B, H, Nq, D]
        _same_shape(out, q)
        return Outputs(out[:, :, index].detach().cpu())
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)  # [B, H, Nq, D]
    _same_shape(out, q)
    gen = problem.generator(salt=2)
    dout_rows = torch.randn(q.shape[0], q.shape[1], len(rows), q.shape[-1], generator=gen).to(out.dtype)  # [B,H,R,D]
    dout = torch.zeros_like(out)
    dout[:, :, index] = dout_rows.to(out.device)
    out.backward(dout)
    dq, dk, dv = (t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves)
    outside = torch.ones(q.shape[2], dtype=torch.bool, device=dq.device)
    outside[index] = False
    rest = dq[:, :, outside]
    return Outputs(
        out=out[:, :, index].detach().cpu(),
        dout=dout_rows,
        dq=dq[:, :, index].detach().cpu(),
        dq_elsewhere=max_abs_diff(rest, torch.zeros_like(rest)),
        dk=dk.detach().cpu(),
        dv=dv.detach().cpu(),
    )


def _same_shape(out: Tensor, q: Tensor) -> None:
    if tuple(out.shape) != tuple(q.shape):
        raise ValueError(f"output shape {tuple(out.shape)} differs from the query's {tuple(q.shape)}")


def comparator(
    q: Tensor, k: Tensor, v: Tensor, problem: Problem, rows: Tensor, dout: Tensor | None = None
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """The plain computation in the case's dtype, on the sampled ``rows`` — FlashAttention's
    "PyTorch implementation in the same low precision": the scores ``q kᵀ`` rounded to the dtype,
    the softmax in float32, the probabilities rounded to the dtype, ``P V`` rounded to it. Each
    product accumulates in float32 (as a low-precision matrix product does), so the comparator
    needs no low-precision matrix unit. Returns ``out [B, H, R, D]`` and, given the rows' output
    gradient ``dout``, ``dq`` on the rows and ``dk``, ``dv`` (autograd through the same steps).

    Query heads are grouped over their shared K/V (never repeated) and rows are batched so that no
    more than :data:`COMPARATOR_ELEMENTS` scores exist at once. Rows that see no key are zero."""
    b, h, _, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    low = q.dtype
    acc = torch.float64 if low == torch.float64 else torch.float32
    index = rows.to(q.device)
    mask = problem.pattern.mask(problem.seq_len, problem.kv_len, device=q.device, rows=rows)  # [R, Nk]
    empty = ~mask.any(dim=-1)  # [R]
    grads = dout is not None
    qr = q[:, :, index].detach().clone().requires_grad_(grads)  # [B, H, R, D]
    kl = k.detach().clone().requires_grad_(grads)
    vl = v.detach().clone().requires_grad_(grads)
    per = max(1, COMPARATOR_ELEMENTS // max(1, b * h * k.shape[2]))
    outs = []
    with torch.set_grad_enabled(grads):
        kf, vf = kl.to(acc), vl.to(acc)  # [B, Hkv, Nk, D]
        for r0 in range(0, len(rows), per):
            r1 = min(len(rows), r0 + per)
            qb = qr[:, :, r0:r1].reshape(b, hkv, g * (r1 - r0), d).to(acc)  # [B, Hkv, G·r, D]: head = hkv·G + g
            s = (qb @ kf.transpose(-1, -2)).to(low).to(acc) * problem.scale  # [B, Hkv, G·r, Nk]
            keep = mask[r0:r1].repeat(g, 1)  # [G·r, Nk]
            s = s.masked_fill(~(keep | empty[r0:r1].repeat(g)[:, None]), float("-inf"))
            p = torch.softmax(s, dim=-1).to(low).to(acc)
            o = (p @ vf).to(low).reshape(b, h, r1 - r0, d)  # [B, H, r, D]
            o = torch.where(empty[r0:r1, None].to(o.device), torch.zeros_like(o), o)
            if dout is not None:
                o.backward(dout[:, :, r0:r1].to(o.device, o.dtype))
            outs.append(o.detach())
    out = torch.cat(outs, dim=2)  # [B, H, R, D]
    if not grads:
        return out, None, None, None
    return out, _grad(qr), _grad(kl), _grad(vl)


def _grad(t: Tensor) -> Tensor:
    return t.grad if t.grad is not None else torch.zeros_like(t)


def judge(
    impl: Implementation,
    problem: Problem,
    inputs: Inputs,
    got: Outputs,
    rows: Tensor,
    *,
    own_reference: bool = True,
) -> CheckResult:
    """The harness's half of the check (see the module docstring)."""
    result = CheckResult(rows=len(rows))
    with torch.no_grad():
        if impl.exact:
            _judge_exact(impl, problem, inputs, got, rows, result, own_reference)
        else:
            _judge_approximation(impl, problem, inputs, got, rows, result)
    return result


def _judge_exact(
    impl: Implementation,
    problem: Problem,
    inputs: Inputs,
    got: Outputs,
    rows: Tensor,
    result: CheckResult,
    own_reference: bool,
) -> None:
    q, k, v = inputs
    dtype = problem.dtype
    if got.dout is None:
        ref, terms = softmax_attention_terms(q, k, v, problem, rows)  # [B, H, R, D] float64
        comp, _, _, _ = comparator(q, k, v, problem, rows)
        result.verdicts.append(judge_exact(got.out, ref, comp, dtype, terms=terms))
    else:
        g = softmax_attention_grads(q, k, v, got.dout.to(torch.float64), problem, rows)
        ref = g.out
        with torch.enable_grad():
            comp, cdq, cdk, cdv = comparator(q, k, v, problem, rows, dout=got.dout)
        assert cdq is not None and cdk is not None and cdv is not None
        assert got.dq is not None and got.dk is not None and got.dv is not None
        result.verdicts.append(judge_exact(got.out, ref, comp, dtype, terms=g.out_terms))
        dq = judge_exact(got.dq, g.dq, cdq, dtype, "dq", terms=g.dq_terms)
        result.verdicts.append(_dq_verdict(dq, got, g.dq, problem))
        result.verdicts.append(judge_exact(got.dk, g.dk, cdk, dtype, "dk", terms=g.dk_terms))
        result.verdicts.append(judge_exact(got.dv, g.dv, cdv, dtype, "dv", terms=g.dv_terms))
    if own_reference and impl.own_reference:
        own = impl.reference(q, k, v, problem, rows=rows).detach()  # [B, H, R, D]
        agrees = judge_exact(own, ref, comp, dtype, "its own reference()")
        result.own_reference_differs = not agrees.ok
        if not agrees.ok:
            result.note = (
                f"its own reference() is not the case's function (max difference {agrees.max_abs_err:.3g},"
                f" bound {agrees.bound:.3g}): approximate by its own account; judged against the case"
            )


def _dq_verdict(verdict: Verdict, got: Outputs, dq_ref: Tensor, problem: Problem) -> Verdict:
    """dq on the rows, and zero elsewhere: the output gradient is zero outside the rows."""
    scale = float(dq_ref.abs().max()) if dq_ref.numel() else 0.0
    limit = float(ulp(torch.tensor(scale, dtype=torch.float64), problem.dtype)) / 16
    if got.dq_elsewhere <= limit:
        return verdict
    return Verdict(False, max(verdict.max_abs_err, got.dq_elsewhere), verdict.rel_err, limit, "dq (outside the rows)")


def _judge_approximation(
    impl: Implementation, problem: Problem, inputs: Inputs, got: Outputs, rows: Tensor, result: CheckResult
) -> None:
    q, k, v = inputs
    rtol = impl.tolerance
    if got.dout is None:
        ref = impl.reference(q, k, v, problem, rows=rows).detach()  # [B, H, R, D] float64
        result.verdicts.append(judge_approximate(got.out, ref, problem.dtype, rtol=rtol))
    else:
        with torch.enable_grad():
            q64, k64, v64 = (t.detach().to("cpu", torch.float64).requires_grad_(True) for t in inputs)
            ref_t = impl.reference(q64, k64, v64, problem, rows=rows)  # [B, H, R, D]
            ref_t.backward(got.dout.to(torch.float64))
        ref = ref_t.detach()
        dq, dk, dv = (_grad(t) for t in (q64, k64, v64))
        assert got.dq is not None and got.dk is not None and got.dv is not None
        result.verdicts.append(judge_approximate(got.out, ref, problem.dtype, rtol=rtol))
        index = rows.cpu()
        result.verdicts.append(judge_approximate(got.dq, dq[:, :, index], problem.dtype, "dq", rtol))
        result.verdicts.append(judge_approximate(got.dk, dk, problem.dtype, "dk", rtol))
        result.verdicts.append(judge_approximate(got.dv, dv, problem.dtype, "dv", rtol))
    full = softmax_attention(q, k, v, problem, rows)  # [B, H, R, D]
    result.full_max_abs_err = max_abs_diff(got.out, full)
    result.full_rel_err = relative_distance(got.out, full)
    result.uniform_rel_err = relative_distance(uniform_attention(v, problem, rows), full)


def check(
    impl: Implementation,
    problem: Problem,
    *,
    fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    max_rows: int = 256,
    grads: bool | None = None,
    inputs: Inputs | None = None,
) -> CheckResult:
    """Run ``impl`` on the problem's seeded inputs and judge it.

    ``fn`` is the prepared call (``impl.prepare(problem)`` when None). Outputs (and gradients,
    when ``grads`` is true — default: when the problem's mode has them) are compared on a seeded
    sample of at most ``max_rows`` query rows, which is exact for those rows at any size."""
    fn = fn or impl.prepare(problem)
    inputs = inputs or problem.make_inputs()
    rows = check_rows(problem, max_rows)
    wants = problem.kind.gradients if grads is None else grads
    got = run_implementation(fn, problem, inputs, rows, wants)
    return judge(impl, problem, inputs, got, rows)
