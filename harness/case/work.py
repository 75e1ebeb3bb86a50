"""Work done by one attention call: floating-point operations and bytes moved.

FLOPs follow the convention of FlashAttention's and tritonbench's benchmarks: the forward pass
is two matrix products, ``QKᵀ`` and ``PV``, of ``2·D`` operations per (query, key) pair each, so
``4·B·H·pairs·D`` (``2·B·H·pairs·(D + Dv)`` where values have their own head dimension ``Dv``,
as multi-head latent attention's do); ``pairs`` is ``Nq·Nk`` for full attention and counts only the pairs really
computed for causal (bottom-right aligned), windowed and block-sparse patterns. Other modes
scale it by their factor (:mod:`attnbench.case.modes`: backward 2.5×, forward+backward 3.5×).
That is the work of *softmax attention*: an exact implementation computes that function, so one
that declares no work of its own is counted as it (``counted = "softmax"``, whatever its kernel
does inside); one that computes something else (``linear``) declares its own
(``counted = "declared"``), and an approximation that declares nothing gets no FLOP figure and no
peak fraction (``counted = "none"``).

Bytes are the least one call must move between memory and the processor: every input read
once and every output written once (a mode's :meth:`~attnbench.case.modes.Mode.io_bytes`). Achieved
bandwidth is set against the memory bandwidth measured on the machine; memory-bound cases
(decoding against a long cache) are judged by it.

Layer ``case``: imports nothing of attnbench outside ``attnbench.case``.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnbench.case.problem import Problem

#: How a record's FLOPs were counted (its ``flops_counted``).
COUNTED = {
    "softmax": "softmax attention's pairs (an exact implementation that declares no work of its own)",
    "declared": "as the implementation declares",
    "none": "not counted (an approximation that declares no work)",
}


@dataclass(frozen=True)
class Work:
    """What one call of an implementation does: FLOPs (None: not counted), bytes moved, and how
    the FLOPs were counted (a key of :data:`COUNTED`)."""

    flops: float | None
    bytes: float | None
    counted: str = "declared"


def softmax_flops(problem: Problem) -> float:
    """FLOPs of the pairs the problem's pattern computes, for the problem's mode."""
    pairs = problem.kind.pairs(problem)  # over the batch
    return 2.0 * problem.heads * pairs * (problem.head_dim + problem.dv) * problem.kind.flops_factor


def dense_flops(problem: Problem) -> float:
    """FLOPs of the same shapes computed densely (every pair), for comparison."""
    pairs = problem.kind.dense_pairs(problem)
    return 2.0 * problem.heads * pairs * (problem.head_dim + problem.dv) * problem.kind.flops_factor


def io_bytes(problem: Problem) -> float:
    """The least bytes one call of the problem's mode moves (inputs read, outputs written once)."""
    return problem.kind.io_bytes(problem)


def softmax_work(problem: Problem) -> Work:
    """The work of softmax attention on ``problem``: its pairs' FLOPs and its compulsory bytes."""
    return Work(softmax_flops(problem), io_bytes(problem), "softmax")
