"""Check an implementation against the correctness contract on one problem.

Three parts, so that the worker can time the implementation first and keep the harness's own work
(the float64 reference) out of the implementation's budget, and so that nothing the
implementation supplies can discard a verdict:

1. the implementation's call: the mode's bench (:class:`attnbench.measure.bench.Bench`) calls it on
   the very tensors it was timed on, restored to the case's seeded values, and keeps its output
   on a seeded sample of query rows; in modes with gradients, one backward pass with an output
   gradient that is zero outside those rows, its ``dq`` on the rows (and the largest ``dq``
   elsewhere, which must be zero), ``dk`` and ``dv`` (:class:`Outputs`);
2. :func:`judge` — the harness's work: the float64 reference (:mod:`attnbench.case.reference`) of
   those rows, the plain computation in the case's dtype on the same rows (:func:`comparator`)
   and the verdicts (:mod:`attnbench.measure.accuracy`). An exact implementation is judged against the
   case's own function only; an approximation against its own ``reference()``, with its distance
   from softmax attention and from uniform attention reported beside;
3. :func:`compare_own_reference` — for an exact implementation that defines a ``reference()`` of
   its own, after the verdicts exist: whether that reference is the case's function. Whatever it
   does (differs, raises, runs out of memory) it can only add a note.

:func:`check` runs all three, for the tests and ``attnbench check``.

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from attnbench.case.modes import FORWARD, FORWARD_BACKWARD, DecodeInputs, sequence_problem
from attnbench.case.problem import Problem
from attnbench.case.reference import (
    Gradients,
    RowSet,
    sample_rows,
    softmax_attention,
    softmax_attention_grads,
    softmax_attention_terms,
    uniform_attention,
)
from attnbench.case.variants import distance
from attnbench.measure.accuracy import (
    LOW_DTYPES,
    Verdict,
    judge_approximate,
    judge_exact,
    max_abs_diff,
    relative_distance,
    ulp,
)
from attnbench.measure.bench import Outputs, bench, prepare
from attnbench.measure.reference_memo import remembered
from attnbench.plugins.contract import Implementation

Tensor = torch.Tensor
Inputs = tuple[Tensor, Tensor, Tensor]
#: Score elements the comparator computes at once (rows are batched to stay under it).
COMPARATOR_ELEMENTS = 1 << 25


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
    #: What an own ``reference()`` is compared with afterwards: per judged (sub-)problem, its
    #: inputs, rows, the float64 reference of the output and the plain computation's output.
    compared: list[tuple[Problem, Inputs, Tensor, Tensor, Tensor]] = field(default_factory=list, repr=False)

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

    def figures(self) -> list[list[object]]:
        """``[what, error, plain error, bound]`` of every tensor compared."""
        return [v.figures() for v in self.verdicts]


def check_rows(problem: Problem, max_rows: int) -> Tensor:
    """The query rows a check compares: a seeded sample of ``max_rows`` (all when fewer)."""
    rows = sample_rows(problem.seq_len, max_rows, problem.seed)
    return torch.arange(problem.seq_len) if rows is None else rows


class _Round(torch.autograd.Function):
    """Round to the case's dtype, forward and backward: a low-precision operation's result, and the
    low-precision gradient autograd hands back through it."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, low: torch.dtype) -> Tensor:
        ctx.low = low
        return x.to(low).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad.to(ctx.low).to(grad.dtype), None


class _Softmax(torch.autograd.Function):
    """``softmax`` of low-precision scores as PyTorch computes it: in float32, the probabilities
    rounded to the dtype; its backward from those rounded probabilities, rounded again."""

    @staticmethod
    def forward(ctx: Any, s: Tensor, low: torch.dtype) -> Tensor:
        p = torch.softmax(s, dim=-1).to(low).to(s.dtype)
        ctx.save_for_backward(p)
        ctx.low = low
        return p

    @staticmethod
    def backward(ctx: Any, dp: Tensor) -> tuple[Tensor, None]:
        (p,) = ctx.saved_tensors
        ds = p * (dp - (dp * p).sum(-1, keepdim=True))
        return ds.to(ctx.low).to(ds.dtype), None


def comparator(
    q: Tensor, k: Tensor, v: Tensor, problem: Problem, rows: Tensor, dout: Tensor | None = None
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """The plain computation in the case's dtype on the sampled ``rows``: FlashAttention's "PyTorch
    implementation in the same low precision" (``attention_ref(upcast=False, reorder_ops=True)``
    in its tests). The keys are scaled and rounded (``reorder_ops``), the scores ``q kᵀ`` rounded to
    the dtype, the softmax taken in float32 and its probabilities rounded, ``P V`` rounded; the
    backward rounds what a low-precision autograd rounds (each product's result, the softmax
    backward taken from the rounded probabilities). Products accumulate in float32, as a
    low-precision matrix product does, so the comparator needs no low-precision matrix unit.
    Returns ``out [B, H, R, D]`` and, given the rows' output gradient ``dout``, ``dq`` on the rows
    and ``dk``, ``dv``.

    Query heads are grouped over their shared K/V (never repeated) and rows are batched so that no
    more than :data:`COMPARATOR_ELEMENTS` scores exist at once. Rows that see no key are zero."""
    b, h, _, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    low = LOW_DTYPES.get(problem.dtype, q.dtype)
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
        ks = _Round.apply(kl.to(acc) * problem.scale, low)  # [B, Hkv, Nk, D]: the keys scaled, rounded
        vf = vl.to(acc)
        for r0 in range(0, len(rows), per):
            r1 = min(len(rows), r0 + per)
            qb = qr[:, :, r0:r1].reshape(b, hkv, g * (r1 - r0), d).to(acc)  # [B, Hkv, G·r, D]: head = hkv·G + g
            s = _Round.apply(qb @ ks.transpose(-1, -2), low)  # [B, Hkv, G·r, Nk]
            at = RowSet.of(problem, rows[r0:r1]) if problem.varies_scores else None
            if problem.softcap:  # FlashAttention's reference: s / c, tanh, · c, each in the dtype
                s = _Round.apply(torch.tanh(_Round.apply(s / problem.softcap, low)) * problem.softcap, low)
            if at is not None and at.slope is not None:  # its float32 bias, added in float32
                s = s - (at.slope * distance(at.q_pos, torch.arange(k.shape[2], dtype=torch.float64))).to(s)
            keep = mask[r0:r1].repeat(g, 1)  # [G·r, Nk]
            s = s.masked_fill(~(keep | empty[r0:r1].repeat(g)[:, None]), float("-inf"))
            if at is not None and at.sink is not None:  # one more column, without a value
                sink = at.sink.expand(b, hkv, s.shape[2], 1).to(s)  # [B, Hkv, G·r, 1]
                p = _Softmax.apply(torch.cat([s, sink], dim=-1), low)[..., :-1]
            else:
                p = _Softmax.apply(s, low)
            o = _Round.apply(p @ vf, low).reshape(b, h, r1 - r0, v.shape[-1])  # [B, H, r, Dv]
            o = torch.where(empty[r0:r1, None].to(o.device), torch.zeros_like(o), o)
            if dout is not None:
                o.backward(dout[:, :, r0:r1].to(o.device, o.dtype))
            outs.append(o.detach())
    out = torch.cat(outs, dim=2).to(low)  # [B, H, R, D]
    if not grads:
        return out, None, None, None
    return out, _grad(qr), _grad(kl), _grad(vl)


def _grad(t: Tensor) -> Tensor:
    return t.grad if t.grad is not None else torch.zeros_like(t)


def judge(impl: Implementation, problem: Problem, inputs: Any, got: Outputs, rows: Tensor) -> CheckResult:
    """The harness's verdicts (see the module): an exact implementation against the case's own
    function, an approximation against its own ``reference()``; a decode step sequence by
    sequence, each against the float64 reference of its own valid tokens (the verdicts of the
    worst sequence kept)."""
    if problem.kind.reads_cache:
        return _judge_sequences(impl, problem, inputs, got)
    result = CheckResult(rows=len(rows))
    with torch.no_grad():
        if impl.exact:
            _judge_exact(problem, inputs, got, rows, result)
        else:
            _judge_approximation(impl, problem, inputs, got, rows, result)
    return result


def _judge_exact(problem: Problem, inputs: Inputs, got: Outputs, rows: Tensor, result: CheckResult) -> None:
    q, k, v = inputs
    dtype = problem.dtype
    if got.dout is None:

        def forward() -> tuple[Tensor, Tensor, Tensor]:
            ref, terms = softmax_attention_terms(q, k, v, problem, rows)  # [B, H, R, D] float64
            return ref, terms, comparator(q, k, v, problem, rows)[0]

        ref, terms, comp = remembered("output", problem, (q, k, v, rows), forward)
        result.verdicts.append(judge_exact(got.out, ref, comp, dtype, terms=terms))
    else:
        dout = got.dout

        def backward() -> tuple[Gradients, tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]]:
            grads = softmax_attention_grads(q, k, v, dout.to(torch.float64), problem, rows)
            with torch.enable_grad():
                return grads, comparator(q, k, v, problem, rows, dout=dout)

        g, (comp, cdq, cdk, cdv) = remembered("output and gradients", problem, (q, k, v, rows, dout), backward)
        ref = g.out
        assert cdq is not None and cdk is not None and cdv is not None
        assert got.dq is not None and got.dk is not None and got.dv is not None
        result.verdicts.append(judge_exact(got.out, ref, comp, dtype, terms=g.out_terms))
        dq = judge_exact(got.dq, g.dq, cdq, dtype, "dq", terms=g.dq_terms)
        result.verdicts.append(_dq_verdict(dq, got, g.dq, problem))
        result.verdicts.append(judge_exact(got.dk, g.dk, cdk, dtype, "dk", terms=g.dk_terms))
        result.verdicts.append(judge_exact(got.dv, g.dv, cdv, dtype, "dv", terms=g.dv_terms))
    result.compared.append((problem, inputs, rows, ref, comp))


def _judge_sequences(impl: Implementation, problem: Problem, inputs: DecodeInputs, got: Outputs) -> CheckResult:
    worst: CheckResult | None = None
    compared = []
    every = torch.arange(problem.seq_len)
    for b in range(problem.batch):
        k_b, v_b = inputs.cache.gather(b)  # [1, Hkv, L_b, D]
        sub = sequence_problem(problem, int(inputs.cache.attended[b]))
        result = judge(impl, sub, (inputs.q[b : b + 1], k_b, v_b), Outputs(got.out[b : b + 1]), every)
        compared += result.compared
        if worst is None or _badness(result.output) > _badness(worst.output):
            worst = result
    assert worst is not None
    worst.rows = problem.seq_len * problem.batch
    worst.compared = compared  # every sequence, for the comparison with an own reference()
    return worst


def _badness(verdict: Verdict) -> float:
    """How far past (or how close to) its bound a verdict is; NaN counts as worst."""
    err, bound = verdict.max_abs_err, verdict.bound
    if err != err:  # NaN
        return float("inf")
    return err / bound if bound > 0 else (0.0 if err == 0 else float("inf"))


def compare_own_reference(impl: Implementation, result: CheckResult) -> str:
    """Whether an exact implementation's own ``reference()`` is the case's function, judged like
    its output: sets ``own_reference_differs`` and returns a note (empty when it agrees or there is
    none). The verdicts are not touched: they were reached against the case's own function before
    this runs. Exceptions propagate (the caller turns them into a note)."""
    if not impl.exact or not impl.own_reference:
        return ""
    for problem, (q, k, v), rows, ref, comp in result.compared:
        with torch.no_grad():
            own = impl.reference(q, k, v, problem, rows=rows).detach()  # [B, H, R, D]
        agrees = judge_exact(own, ref, comp, problem.dtype, "its own reference()")
        if not agrees.ok:
            result.own_reference_differs = True
            return (
                f"its own reference() is not the case's function (max difference {agrees.max_abs_err:.3g},"
                f" bound {agrees.bound:.3g}): approximate by its own account; judged against the case"
            )
    result.own_reference_differs = False
    return ""


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


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
    fn: Callable[..., Tensor] | None = None,
    max_rows: int = 256,
    grads: bool | None = None,
    inputs: Any = None,
) -> CheckResult:
    """Run ``impl`` on the problem's seeded inputs and judge it, as a run's worker does: a first
    call on the inputs scrambled, then the judged call on them restored (:class:`Bench`).

    ``fn`` is the prepared call (``impl.prepare(problem)`` when None). Outputs (and gradients,
    when ``grads`` is true — default: when the problem's mode has them; true on a forward case
    judges a forward+backward call) are compared on a seeded sample of at most ``max_rows`` query
    rows, which is exact for those rows at any size. An own ``reference()`` that fails adds a note."""
    wants = problem.kind.gradients if grads is None else grads
    timed = problem
    if wants != problem.kind.gradients:
        timed = problem.with_(mode=(FORWARD_BACKWARD if wants else FORWARD).name)
    inputs = inputs or timed.kind.make_inputs(timed)
    fn = fn or prepare(impl, timed, inputs)
    rows = check_rows(problem, max_rows)
    call = bench(fn, timed, inputs)
    call.scramble()
    try:
        call.first()
    finally:
        call.restore()
    result = judge(impl, problem, inputs, call.check(rows), rows)
    try:
        result.note = _join(result.note, compare_own_reference(impl, result))
    except Exception as exc:
        result.note = _join(result.note, f"its own reference() could not be compared: {type(exc).__name__}: {exc}")
    return result
