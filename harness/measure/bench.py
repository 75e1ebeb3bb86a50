"""How each mode's call is made: the call the timing loop repeats, and the judged call on the same tensors.

A :class:`Bench` is one implementation's call on one case's inputs (:mod:`attnbench.case.modes`
declares what each mode computes; this module makes the call). Before the first call the inputs
are *scrambled* in place (negated: other values of the same distribution); after timing they are
restored exactly, and the accuracy check calls the implementation once more on those very tensors
with the case's seeded values. So the call that is judged is the call that was timed: an
implementation that keeps the output it computed for tensors it was handed before, and returns
it when it sees them again, gives the scrambled inputs' answer and is found out, while honest
set-up (a mask or features built once in ``prepare``) is untouched.

:func:`prepare` is an implementation's set-up for the case's mode (a decode step gets the cache),
:func:`bench` the mode's bench, and :class:`Outputs` what the judged call produced.

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from attnbench.case.modes import Backward, DecodeInputs, Forward, ForwardBackward, Inputs, Mode
from attnbench.measure.memory import MemoryUnavailable

if TYPE_CHECKING:
    from attnbench.case.problem import Problem
    from attnbench.plugins.contract import Implementation

Tensor = torch.Tensor
Call = Callable[[], object]
AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class Outputs:
    """What the implementation produced for the check, on the CPU in its own dtype."""

    out: Tensor  # [B, H, R, D] the sampled rows of the output
    dout: Tensor | None = None  # [B, H, R, D] the output gradient on those rows (zero elsewhere)
    dq: Tensor | None = None  # [B, H, R, D]
    dq_elsewhere: float = 0.0  # max|dq| outside the sampled rows (exactly zero when correct)
    dk: Tensor | None = None  # [B, Hkv, Nk, D]
    dv: Tensor | None = None


class Bench:
    """One implementation's timed call and its judged call on the same tensors (see the module).

    ``call`` is the zero-argument call the timing loop repeats; ``first()`` makes the first call
    (the warm-up, where a wrong output shape is found); ``scramble()`` and ``restore()`` negate the
    inputs in place (an involution: restoring gives back the seeded values bit for bit);
    ``check(rows)`` is one more call on the same tensors whose output (and gradients) on the
    sampled ``rows`` are kept for the accuracy check: ``arm(rows)`` readies it (the check's output
    gradient, outside any measurement), ``call()`` makes it, and ``outputs(result, rows)`` keeps
    what it produced, so that the judged call can also be the memory pass."""

    def __init__(self, call: Call, held: Sequence[Tensor] = ()) -> None:
        self.call = call
        self.held = list(held)  # the tensors scrambled in place: every input the call reads
        self.scrambled = False

    def first(self) -> None:
        self.call()

    def scramble(self) -> None:
        if not self.scrambled:
            self._negate()
            self.scrambled = True

    def restore(self) -> None:
        if self.scrambled:
            self._negate()
            self.scrambled = False

    def _negate(self) -> None:
        with torch.no_grad():
            for t in self.held:
                t.neg_()

    def arm(self, rows: Tensor) -> None:
        """Ready the judged call on the sampled ``rows`` (nothing, where the mode has no gradient)."""

    def outputs(self, result: object, rows: Tensor) -> Outputs:
        raise NotImplementedError

    def check(self, rows: Tensor) -> Outputs:
        """The judged call: armed, made, and its outputs on ``rows`` kept."""
        self.arm(rows)
        return self.outputs(self.call(), rows)


def same_shape(out: object, like: Tensor) -> Tensor:
    """An output must be a tensor shaped ``like`` the output (:func:`output_like`)."""
    if not isinstance(out, Tensor):
        raise TypeError(f"the implementation returned {type(out).__name__}, not a tensor")
    if tuple(out.shape) != tuple(like.shape):
        raise ValueError(f"output shape {tuple(out.shape)} differs from the expected {tuple(like.shape)}")
    return out


def output_like(q: Tensor, v: Tensor, device: str | torch.device = "meta") -> Tensor:
    """An empty tensor shaped like the output, ``[B, H, Nq, Dv]`` (the query's rows, the values'
    columns), on ``device`` (``meta``: no memory) in the query's dtype."""
    return torch.empty((*q.shape[:-1], v.shape[-1]), device=device, dtype=q.dtype)


def output_gradient(problem: Problem, like: Tensor) -> Tensor:
    """A seeded output gradient shaped like the output (the same for every implementation): the
    one the timed calls propagate."""
    gen = problem.generator(salt=1)
    return torch.randn(like.shape, generator=gen).to(like.device, like.dtype)  # [B, H, Nq, D]


def check_gradient(problem: Problem, like: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """The output gradient of the accuracy check: seeded values on the sampled ``rows``, zero
    elsewhere (so that ``dq`` on the rows and ``dk``, ``dv`` in full depend on those rows alone).
    Returns the full gradient ``[B, H, Nq, D]`` and its rows ``[B, H, R, D]`` (on the CPU)."""
    gen = problem.generator(salt=2)
    b, h, _, d = like.shape
    on_rows = torch.randn(b, h, len(rows), d, generator=gen).to(like.dtype)  # [B, H, R, D]
    full = torch.zeros_like(like)
    full[:, :, rows.to(like.device)] = on_rows.to(like.device)
    return full, on_rows


def leaves(inputs: Inputs) -> list[Tensor]:
    """Fresh ``q, k, v`` that require gradients."""
    return [t.detach().clone().requires_grad_(True) for t in inputs]  # [B, H(kv), N, D] each


def gradient_outputs(out: Tensor, grads: list[Tensor], rows: Tensor, dout_rows: Tensor) -> Outputs:
    """What a backward pass produced, for an output gradient that is ``dout_rows`` on ``rows``
    and zero elsewhere: the output and ``dq`` on the rows, ``dk``, ``dv`` in full, and the largest
    ``dq`` outside the rows (which must be zero)."""
    index = rows.to(out.device)
    dq, dk, dv = (t.grad if t.grad is not None else torch.zeros_like(t) for t in grads)
    outside = torch.ones(dq.shape[2], dtype=torch.bool, device=dq.device)
    outside[index] = False
    rest = dq[:, :, outside].detach()
    return Outputs(
        out=out[:, :, index].detach().cpu(),
        dout=dout_rows,
        dq=dq[:, :, index].detach().cpu(),
        dq_elsewhere=float(rest.abs().max()) if rest.numel() else 0.0,
        dk=dk.detach().cpu(),
        dv=dv.detach().cpu(),
    )


class ForwardBench(Bench):
    """``fn(q, k, v)`` on the case's own tensors, timed and judged alike."""

    def __init__(self, fn: AttentionFn, inputs: Inputs) -> None:
        q, k, v = inputs  # [B, H, Nq, D], [B, Hkv, Nk, D] x2

        def forward() -> object:
            with torch.no_grad():
                return fn(q, k, v)

        super().__init__(forward, inputs)
        self.like = output_like(q, v)

    def first(self) -> None:
        same_shape(self.call(), self.like)

    def outputs(self, result: object, rows: Tensor) -> Outputs:
        out = same_shape(result, self.like)  # [B, H, Nq, Dv]
        return Outputs(out[:, :, rows.to(out.device)].detach().cpu())


class BackwardBench(Bench):
    """The backward pass through one forward graph: timed with the seeded output gradient, judged
    with the check's gradient written into the same buffer and propagated through the same graph
    (scrambling is the output gradient's: the check propagates another)."""

    def __init__(self, fn: AttentionFn, problem: Problem, inputs: Inputs) -> None:
        self.problem = problem
        self.grads = leaves(inputs)
        self.out = same_shape(fn(*self.grads), output_like(inputs[0], inputs[2]))  # [B, H, Nq, Dv]: the graph, once
        self.dout = output_gradient(problem, self.out)  # [B, H, Nq, D]: one buffer, refilled for the check

        def backward() -> object:
            for t in self.grads:
                t.grad = None
            self.out.backward(self.dout, retain_graph=True)
            return self.grads[0].grad

        super().__init__(backward)

    def arm(self, rows: Tensor) -> None:
        full, self.on_rows = check_gradient(self.problem, self.out, rows)
        with torch.no_grad():
            self.dout.copy_(full)

    def outputs(self, result: object, rows: Tensor) -> Outputs:
        return gradient_outputs(self.out, self.grads, rows, self.on_rows)


class ForwardBackwardBench(Bench):
    """Forward and backward on one set of leaf tensors: timed on them scrambled with the seeded
    output gradient, judged on them restored with the check's gradient in the same buffer."""

    def __init__(self, fn: AttentionFn, problem: Problem, inputs: Inputs) -> None:
        self.problem = problem
        self.grads = leaves(inputs)  # [B, H(kv), N, D] each
        self.like = output_like(inputs[0], inputs[2], inputs[0].device)  # [B, H, Nq, Dv]
        self.dout = output_gradient(problem, self.like)  # [B, H, Nq, Dv]: one buffer, refilled for the check

        def forward_backward() -> object:
            for t in self.grads:
                t.grad = None
            out = fn(*self.grads)
            out.backward(self.dout)
            return out

        super().__init__(forward_backward, self.grads)

    def first(self) -> None:
        same_shape(self.call(), self.like)

    def arm(self, rows: Tensor) -> None:
        full, self.on_rows = check_gradient(self.problem, self.like, rows)
        with torch.no_grad():
            self.dout.copy_(full)

    def outputs(self, result: object, rows: Tensor) -> Outputs:
        out = same_shape(result, self.like)  # [B, H, Nq, Dv], the leaves' gradients filled
        return gradient_outputs(out, self.grads, rows, self.on_rows)


class DecodeBench(Bench):
    """One decode step: the new tokens' queries, keys and values and the whole cache are the
    scrambled inputs (the step rewrites the same slots on every call, so restoring the cache
    restores the step's inputs exactly)."""

    def __init__(self, fn: AttentionFn, inputs: DecodeInputs) -> None:
        q, k_new, v_new = inputs.q, inputs.k_new, inputs.v_new

        def step() -> object:
            with torch.no_grad():
                return fn(q, k_new, v_new)  # [B, H, S, D]; the cache now holds the new tokens

        held = (q, k_new, inputs.cache.k) if inputs.cache.latent else (q, k_new, v_new, inputs.cache.k, inputs.cache.v)
        super().__init__(step, held)  # latent values are views of the keys: negated with them
        self.like = output_like(q, v_new)

    def first(self) -> None:
        same_shape(self.call(), self.like)

    def outputs(self, result: object, rows: Tensor) -> Outputs:
        return Outputs(same_shape(result, self.like).detach().cpu())


def judged_call(judged: Bench, rows: Tensor, peak_bytes: Callable[[Call], int]) -> tuple[Outputs, int | None, str]:
    """The judged call, which is also the memory pass: ``(outputs on rows, peak bytes, why the
    memory was not measured)``. ``peak_bytes`` measures one call (the device's); a pass it has to
    repeat repeats the call, and the last one's outputs are kept."""
    judged.arm(rows)
    made: list[object] = []

    def call() -> object:
        made[:] = [judged.call()]  # the earlier pass's result is let go once this one exists
        return made[0]

    peak, why = None, ""
    try:
        peak = peak_bytes(call)
    except MemoryUnavailable as exc:
        why = str(exc)
    if not made:
        call()
    return judged.outputs(made[0], rows), peak, why


#: The bench of each mode, by the mode's class.
BENCHES: dict[type[Mode], Callable[[AttentionFn, Any, Any], Bench]] = {
    Forward: lambda fn, problem, inputs: ForwardBench(fn, inputs),
    Backward: lambda fn, problem, inputs: BackwardBench(fn, problem, inputs),
    ForwardBackward: lambda fn, problem, inputs: ForwardBackwardBench(fn, problem, inputs),
}


def bench(fn: AttentionFn, problem: Problem, inputs: Any) -> Bench:
    """The timed call and the judged call of ``fn`` on ``inputs`` in the case's mode."""
    if problem.kind.reads_cache:
        return DecodeBench(fn, inputs)
    return BENCHES[type(problem.kind)](fn, problem, inputs)


def prepare(impl: Implementation, problem: Problem, inputs: Any) -> AttentionFn:
    """The implementation's set-up for the case's mode, outside the timing: a decode step gets the
    cache (:meth:`~attnbench.plugins.contract.Implementation.prepare_decode`)."""
    if problem.kind.reads_cache:
        return impl.prepare_decode(problem, inputs.cache)
    return impl.prepare(problem)


def prepare_timed(impl: Implementation, problem: Problem, inputs: Any) -> tuple[AttentionFn, float]:
    """:func:`prepare`, and the seconds it took (or the set-up time the prepared call reports as
    its ``setup_s``, such as a compilation that happened on an earlier call)."""
    start = time.perf_counter()
    fn = prepare(impl, problem, inputs)
    measured = time.perf_counter() - start
    return fn, float(getattr(fn, "setup_s", measured))
