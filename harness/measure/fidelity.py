"""Fidelity: does an implementation still attend where softmax attention does?

On a probe (:mod:`attnbench.case.probes`) every query row has known target keys, on which full
softmax attention — the case without its window or layout — puts a planted share of the row's
weight. What reaches the output from the targets is ``T_i = Σ_t P_it v_t``. The share an
implementation *recovers* is measured from outputs alone, so any plugin can be judged:

    recovered_i = (out_i · T̂_i) / (softmax_i · T̂_i)        with T̂_i = T_i / ||T_i||

1 when the output carries the targets' values as softmax attention does (an exact implementation
scores 1 within its accuracy), 0 when it carries none of them (values are random, so an output
that does not attend to the targets projects near 0 on them: chance); above 1 when it puts more
weight on them than full attention does (a window that holds the target has fewer competitors).
It is averaged over the sampled rows that have targets, and for ``retrieval`` also per target
distance (log-spaced bins): the retrieval curve. Uniform attention's recovery (the mean of the
visible values) is kept beside it as the floor.

For short sequences (≤ 256), the implementation's *effective attention matrix* is recovered from
its outputs too: its output is linear in the values, so calling it with values that are slices
of the identity (``Nk / D`` calls) returns the columns of its attention matrix, whatever the
implementation is. The map of the first head is kept (float16, base64) beside softmax
attention's own.

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from attnbench.case.problem import Problem
from attnbench.case.reference import softmax_attention, uniform_attention, weights_on

Tensor = torch.Tensor
#: Maps are recovered for sequences at most this long (keys and queries).
MAP_LIMIT = 256


@dataclass
class Fidelity:
    """What a probe says of one implementation's output on its sampled rows."""

    probe_mass: float  # softmax attention's mean share on the targets (the planted share, realised)
    recovered: float  # mean share recovered (1: as softmax attention; 0: chance)
    uniform_recovered: float  # the same for uniform attention: the floor
    probe_rel_err: float  # max|out - softmax| / max|softmax| on the probe's inputs
    curve: list[list[float]] = field(default_factory=list)  # [[d_lo, d_hi, mean recovered, rows], ...]


def _along(out: Tensor, direction: Tensor) -> Tensor:
    return (out * direction).sum(dim=-1)


def measure(out: Tensor, q: Tensor, k: Tensor, v: Tensor, problem: Problem, rows: Tensor) -> Fidelity | None:
    """The fidelity of ``out`` (the implementation's sampled rows ``[B, H, R, D]``); None for the
    random probe or when no sampled row has a target."""
    if problem.probe == "random":
        return None
    full = problem.full()
    plan = problem.targets()
    keys = plan.index[rows.cpu()]  # [R, T]
    have = (keys >= 0).any(dim=1)  # [R]
    if not bool(have.any()):
        return None
    softmax = softmax_attention(q, k, v, full, rows)  # [B, H, R, D]
    weights = weights_on(q, k, full, rows, keys)  # [B, H, R, T]
    g = problem.heads // problem.kv_heads
    values = v.detach()[:, :, keys.clamp(min=0).to(v.device)].to("cpu", torch.float64)  # [B, Hkv, R, T, D]
    values = values.repeat_interleave(g, dim=1)  # [B, H, R, T, D]
    carried = (weights[..., None] * values).sum(dim=3)  # [B, H, R, D]: T_i
    direction = carried / carried.norm(dim=-1, keepdim=True).clamp(min=1e-300)
    base = _along(softmax, direction)  # [B, H, R]
    mine = _along(out.detach().to("cpu", torch.float64), direction) / base
    flat = _along(uniform_attention(v, full, rows), direction) / base
    scale = float(softmax.abs().max())
    err = float((out.detach().to("cpu", torch.float64) - softmax).abs().max()) / scale if scale else math.nan
    distance = plan.distance[rows.cpu()]  # [R]
    return Fidelity(
        probe_mass=float(weights.sum(dim=3)[..., have].mean()),
        recovered=float(mine[..., have].mean()),
        uniform_recovered=float(flat[..., have].mean()),
        probe_rel_err=err,
        curve=_curve(mine, distance, have) if problem.probe.startswith("retrieval") else [],
    )


def _curve(recovered: Tensor, distance: Tensor, have: Tensor) -> list[list[float]]:
    """Mean recovery per log2 bin of target distance: ``[lo, hi, mean, rows]``."""
    out = []
    top = int(distance.max()) if len(distance) else 0
    lo = 1
    while lo <= top:
        hi = lo * 2
        inside = have & (distance >= lo) & (distance < hi)
        if bool(inside.any()):
            out.append([float(lo), float(hi), float(recovered[..., inside].mean()), float(int(inside.sum()))])
        lo = hi
    return out


def effective_map(fn: Callable[[Tensor, Tensor, Tensor], Tensor], q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``[Nq, Nk]`` float32: the attention matrix of the first batch entry and head, recovered
    from outputs with identity slices as values (``ceil(Nk / D)`` calls)."""
    nk, d = v.shape[2], v.shape[3]
    columns = []
    with torch.no_grad():
        for start in range(0, nk, d):
            width = min(d, nk - start)
            eye = torch.zeros_like(v)  # [B, Hkv, Nk, D]
            eye[:, :, start : start + width, :width] = torch.eye(width, dtype=v.dtype, device=v.device)
            out = fn(q, k, eye)  # [B, H, Nq, D]: columns start … start+width of the attention matrix
            columns.append(out[0, 0, :, :width].float().cpu())
    return torch.cat(columns, dim=1)  # [Nq, Nk]


def softmax_map(q: Tensor, k: Tensor, problem: Problem) -> Tensor:
    """``[Nq, Nk]``: unrestricted softmax attention's own matrix (first batch entry and head)."""
    full = problem.full()
    s = (q[0, 0].double() @ k[0, 0].double().T) * problem.scale  # [Nq, Nk]
    s = s.masked_fill(~full.pattern.mask(problem.seq_len, problem.kv_len), float("-inf"))
    return torch.softmax(s, dim=-1).nan_to_num(0.0).float()


def encode(matrix: Tensor) -> str:
    """A map as base64 of its float16 bytes (row-major)."""
    return base64.b64encode(matrix.to(torch.float16).numpy().tobytes()).decode("ascii")


def decode(text: str, rows: int, cols: int) -> np.ndarray:
    """The map :func:`encode` wrote, as float32 ``[rows, cols]``."""
    return np.frombuffer(base64.b64decode(text), dtype=np.float16).astype(np.float32).reshape(rows, cols)


def wants_map(problem: Problem) -> bool:
    return problem.probe != "random" and problem.seq_len <= MAP_LIMIT and problem.kv_len <= MAP_LIMIT
