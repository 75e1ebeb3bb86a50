"""The float64 reference: masked softmax attention and its gradients, at any size.

Three things keep it cheap enough for every shipped suite (long sequences, long caches, many
heads), while staying exact for what it computes:

* **sampled rows** — attention rows are independent, so the output is computed for a seeded
  sample of query rows only; with an output gradient that is zero outside those rows, ``dq`` on
  them and ``dk``, ``dv`` in full depend on those rows alone, so gradients are checked exactly at
  the same cost;
* **grouped heads** — the ``G = H / Hkv`` query heads that share a key/value head are stacked as
  one ``[B, Hkv, G·R, D]`` matrix against the shared keys: K and V are never repeated;
* **key chunks** — keys are visited ``chunk`` at a time (converted to float64 one chunk at a
  time) with the online softmax's running maximum and sum, so no ``R × Nk`` matrix and no
  float64 copy of the whole cache exists. Gradients take a second pass over the chunks with the
  final maximum and sum (the backward FlashAttention uses), again one chunk at a time.

The scores are the case's (:mod:`attnbench.case.variants`): soft-capped, then biased (ALiBi),
then masked; a sink logit starts every row's running maximum and sum as one more term without a
value, and the backward multiplies the score gradient by the soft-cap's slope. Rows that may
attend no key output zeros (and pass no gradient).

Layer ``case``: imports nothing of attnbench outside ``attnbench.case``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from attnbench.case.problem import Problem
from attnbench.case.variants import alibi_slopes, distance, positions, sink_logits, soft_cap, soft_cap_slope

Tensor = torch.Tensor
#: The most float64 numbers one key chunk's scores (``B·H·R·chunk``) or keys (``B·Hkv·chunk·D``) hold.
CHUNK_ELEMENTS = 1 << 23


def expand_kv(k: Tensor, heads: int) -> Tensor:
    """Repeat ``[B, Hkv, N, D]`` keys or values to ``[B, heads, N, D]`` (grouped-query attention:
    query head ``h`` reads kv head ``h // (heads // Hkv)``). For small references only."""
    group = heads // k.shape[1]
    return k if group == 1 else k.repeat_interleave(group, dim=1)


def sample_rows(n: int, limit: int, seed: int = 0) -> Tensor | None:
    """A seeded sample of ``limit`` query rows out of ``n`` (sorted), or None for all rows when
    ``n <= limit``. The last row is always included (it sees the most keys under causal)."""
    if n <= limit:
        return None
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randperm(n - 1, generator=gen)[: limit - 1]
    return torch.cat([picks, torch.tensor([n - 1])]).sort().values


def _rows(problem: Problem, rows: Tensor | None) -> Tensor:
    return torch.arange(problem.seq_len) if rows is None else rows.cpu()


def _grouped(x: Tensor, problem: Problem, rows: Tensor) -> Tensor:
    """``[B, H, Nq, D]`` (any device, dtype) → the sampled rows as ``[B, Hkv, G·R, D]`` float64."""
    b, hkv = problem.batch, problem.kv_heads
    picked = x.detach()[:, :, rows.to(x.device)].to("cpu", torch.float64)  # [B, H, R, D]
    return picked.reshape(b, hkv, -1, picked.shape[-1])  # [B, Hkv, G·R, D]


def _ungroup(x: Tensor, problem: Problem) -> Tensor:
    """``[B, Hkv, G·R, D]`` → ``[B, H, R, D]``."""
    return x.reshape(problem.batch, problem.heads, -1, x.shape[-1])


def _chunks(problem: Problem, rows: int) -> Iterator[tuple[int, int]]:
    """Key ranges small enough that one chunk's scores and its float64 keys and values each hold
    at most :data:`CHUNK_ELEMENTS` numbers."""
    per_key = max(1, problem.batch * problem.heads * rows, problem.batch * problem.kv_heads * problem.head_dim)
    size = max(64, CHUNK_ELEMENTS // per_key)
    for c0 in range(0, problem.kv_len, size):
        yield c0, min(problem.kv_len, c0 + size)


@dataclass
class RowSet:
    """The sampled rows as the reference reads them: which keys each may see, and what the case
    does to their scores (:mod:`attnbench.case.variants`), laid out like the grouped rows
    ``[B, Hkv, G·R, ·]`` (row ``g·R + r`` is head ``hkv·G + g``, sampled row ``r``)."""

    allowed: Tensor  # [R, Nk] bool
    slope: Tensor | None  # [1, Hkv, G·R, 1] ALiBi slopes, or None
    q_pos: Tensor  # [G·R, 1] each row's key position
    sink: Tensor | None  # [1, Hkv, G·R, 1] sink logits, or None

    @classmethod
    def of(cls, problem: Problem, rows: Tensor) -> RowSet:
        g, hkv = problem.heads // problem.kv_heads, problem.kv_heads

        def per_row(per_head: Tensor) -> Tensor:  # [H] -> [1, Hkv, G·R, 1]
            return per_head.view(hkv, g).repeat_interleave(len(rows), dim=1).reshape(1, hkv, -1, 1)

        return cls(
            allowed=problem.pattern.mask(problem.seq_len, problem.kv_len, rows=rows),
            slope=per_row(alibi_slopes(problem.heads)) if problem.bias == "alibi" else None,
            q_pos=positions(problem.seq_len, problem.kv_len, rows).repeat(g, 1),
            sink=per_row(sink_logits(problem.heads, problem.seed)) if problem.learned_sinks else None,
        )


def _scores(qg: Tensor, k: Tensor, c0: int, c1: int, at: RowSet, problem: Problem) -> tuple[Tensor, Tensor | None]:
    """Scores of the grouped rows ``qg`` against keys ``[c0, c1)`` as the case computes them
    (soft-capped, biased), -inf where not allowed; and, with a soft-cap, its slope (the backward's
    factor)."""
    kc = k[:, :, c0:c1].to("cpu", torch.float64)  # [B, Hkv, C, D]
    s = soft_cap((qg @ kc.transpose(-1, -2)) * problem.scale, problem.softcap)  # [B, Hkv, G·R, C]
    slope = soft_cap_slope(s, problem.softcap) if problem.softcap else None
    if at.slope is not None:
        s = s - at.slope * distance(at.q_pos, torch.arange(c0, c1, dtype=torch.float64))
    g = problem.heads // problem.kv_heads
    keep = at.allowed[:, c0:c1].repeat(g, 1)  # [G·R, C] (row g·R + r is head g, sampled row r)
    return s.masked_fill(~keep, float("-inf")), slope


Statistics = tuple[Tensor, RowSet, Tensor, Tensor]  # grouped rows, what they see, row maxima, exp-sums


def _statistics(q: Tensor, k: Tensor, problem: Problem, rows: Tensor) -> Statistics:
    """Grouped rows, what they see, and each row's score maximum and exp-sum over every allowed
    key (and its sink, which joins the sum)."""
    qg = _grouped(q, problem, rows)  # [B, Hkv, G·R, D]
    at = RowSet.of(problem, rows)
    m = torch.full((*qg.shape[:-1], 1), float("-inf"), dtype=torch.float64)  # [B, Hkv, G·R, 1]
    total = torch.zeros_like(m)
    if at.sink is not None:  # the sink as one more term of every row's sum
        m = at.sink.expand_as(m).clone()
        total = torch.ones_like(m)
    for c0, c1 in _chunks(problem, len(rows)):
        s, _ = _scores(qg, k, c0, c1, at, problem)  # [B, Hkv, G·R, C]
        m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
        safe = torch.nan_to_num(m_new, neginf=0.0)
        total = total * torch.exp(torch.nan_to_num(m - safe, nan=0.0)) + torch.exp(s - safe).sum(-1, keepdim=True)
        m = m_new
    return qg, at, torch.nan_to_num(m, neginf=0.0), total


def weights_on(q: Tensor, k: Tensor, problem: Problem, rows: Tensor, keys: Tensor) -> Tensor:
    """``[B, H, R, T]``: softmax attention's weight on the given ``keys`` ``[R, T]`` of each sampled
    row (float64; 0 where a key index is -1 or the pattern hides the pair)."""
    _, at, m, total = _statistics(q, k, problem, rows)
    lse = _ungroup(m + torch.log(total.clamp(min=1e-300)), problem)[..., 0]  # [B, H, R]
    index = keys.clamp(min=0)  # [R, T]
    g = problem.heads // problem.kv_heads
    picked = k.detach()[:, :, index.to(k.device)].to("cpu", torch.float64)  # [B, Hkv, R, T, D]
    picked = picked.repeat_interleave(g, dim=1)  # [B, H, R, T, D]
    q64 = q.detach()[:, :, rows.to(q.device)].to("cpu", torch.float64)  # [B, H, R, D]
    s = soft_cap((picked @ q64[..., None])[..., 0] * problem.scale, problem.softcap)  # [B, H, R, T]
    if at.slope is not None:
        slopes = alibi_slopes(problem.heads)[None, :, None, None]  # [1, H, 1, 1]
        s = s - slopes * distance(positions(problem.seq_len, problem.kv_len, rows), index.to(torch.float64))
    seen = (keys >= 0) & torch.gather(at.allowed, 1, index)  # [R, T]
    return torch.exp(s - lse[..., None]) * seen


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, problem: Problem, rows: Tensor | None = None) -> Tensor:
    """``softmax(q kᵀ · scale + mask) v`` in float64 on the CPU for ``problem``'s pattern.

    Returns ``[B, H, R, D]`` for the ``R`` query ``rows`` (all rows when None). Not
    differentiable (see :func:`softmax_attention_grads`)."""
    return softmax_attention_terms(q, k, v, problem, rows)[0]


def softmax_attention_terms(
    q: Tensor, k: Tensor, v: Tensor, problem: Problem, rows: Tensor | None = None, stats: Statistics | None = None
) -> tuple[Tensor, Tensor]:
    """The output and the magnitude of the terms it sums, ``P |V|`` (both ``[B, H, R, D]``):
    what a reordered sum's rounding error is proportional to (:mod:`attnbench.measure.accuracy`).
    ``stats``: the rows' :func:`_statistics`, when the caller has them already."""
    picked = _rows(problem, rows)
    qg, at, m, total = stats if stats is not None else _statistics(q, k, problem, picked)
    out = torch.zeros((*qg.shape[:-1], v.shape[-1]), dtype=torch.float64)  # [B, Hkv, G·R, Dv]
    terms = torch.zeros_like(out)
    for c0, c1 in _chunks(problem, len(picked)):
        p = torch.exp(_scores(qg, k, c0, c1, at, problem)[0] - m)  # [B, Hkv, G·R, C]
        vc = v[:, :, c0:c1].to("cpu", torch.float64)
        out += p @ vc
        terms += p @ vc.abs()
        del p, vc  # before the next chunk's are made: one chunk's float64 values alive at a time
    norm = total.masked_fill(total == 0, 1.0)
    return _ungroup(out / norm, problem), _ungroup(terms / norm, problem)


@dataclass
class Gradients:
    """The float64 reference of a backward pass on sampled rows, and each tensor's term magnitudes."""

    out: Tensor  # [B, H, R, D]
    dq: Tensor  # [B, H, R, D] on the rows (zero elsewhere)
    dk: Tensor  # [B, Hkv, Nk, D]
    dv: Tensor
    out_terms: Tensor
    dq_terms: Tensor
    dk_terms: Tensor
    dv_terms: Tensor


def softmax_attention_grads(
    q: Tensor, k: Tensor, v: Tensor, dout: Tensor, problem: Problem, rows: Tensor | None = None
) -> Gradients:
    """The output and the gradients for an output gradient that is zero outside ``rows``.

    ``dout`` is ``[B, H, R, D]`` (the gradient on the sampled rows). ``dq`` is on those rows
    (every other row's is exactly zero), ``dk`` and ``dv`` in full, all float64 on the CPU. The
    backward of softmax attention: ``P = softmax(S)``, ``dV = Pᵀ dO``, ``dP = dO Vᵀ``,
    ``dS = P ⊙ (dP − rowsum(dO ⊙ O))``, ``dQ = dS K · scale``, ``dK = dSᵀ Q · scale``, chunk by
    chunk of keys."""
    picked = _rows(problem, rows)
    stats = _statistics(q, k, problem, picked)  # one pass over the keys, shared by the output and the gradients
    out, out_terms = softmax_attention_terms(q, k, v, problem, picked, stats)  # [B, H, R, D]
    qg, at, m, total = stats
    b, hkv = problem.batch, problem.kv_heads
    do = dout.detach().to("cpu", torch.float64).reshape(b, hkv, -1, dout.shape[-1])  # [B, Hkv, G·R, D]
    og = out.reshape(b, hkv, -1, out.shape[-1])  # [B, Hkv, G·R, D]
    delta = (do * og).sum(-1, keepdim=True)  # [B, Hkv, G·R, 1]
    inv = 1.0 / total.masked_fill(total == 0, 1.0)
    dq, dq_terms = torch.zeros_like(qg), torch.zeros_like(qg)
    dk = torch.zeros(k.shape, dtype=torch.float64)  # [B, Hkv, Nk, D]
    dv = torch.zeros(v.shape, dtype=torch.float64)  # [B, Hkv, Nk, Dv]
    dk_terms, dv_terms = torch.zeros_like(dk), torch.zeros_like(dv)
    for c0, c1 in _chunks(problem, len(picked)):
        kc = k[:, :, c0:c1].to("cpu", torch.float64)  # [B, Hkv, C, D]
        vc = v[:, :, c0:c1].to("cpu", torch.float64)
        s, cap_slope = _scores(qg, k, c0, c1, at, problem)
        p = torch.exp(s - m) * inv  # [B, Hkv, G·R, C]
        dv[:, :, c0:c1] = p.transpose(-1, -2) @ do
        dv_terms[:, :, c0:c1] = p.transpose(-1, -2) @ do.abs()
        ds = p * (do @ vc.transpose(-1, -2) - delta)  # [B, Hkv, G·R, C]
        ds_terms = p * (do.abs() @ vc.abs().transpose(-1, -2) + delta.abs())  # before the subtraction cancels
        if cap_slope is not None:  # through the soft-cap: d(c·tanh(s/c))/ds
            ds, ds_terms = ds * cap_slope, ds_terms * cap_slope
        dq += (ds @ kc) * problem.scale
        dq_terms += (ds_terms @ kc.abs()) * problem.scale
        dk[:, :, c0:c1] = (ds.transpose(-1, -2) @ qg) * problem.scale
        dk_terms[:, :, c0:c1] = (ds_terms.transpose(-1, -2) @ qg.abs()) * problem.scale
    return Gradients(out, _ungroup(dq, problem), dk, dv, out_terms, _ungroup(dq_terms, problem), dk_terms, dv_terms)


def uniform_attention(v: Tensor, problem: Problem, rows: Tensor | None = None) -> Tensor:
    """The mean of the values each row may see (uniform attention over the case's pattern), float64
    ``[B, H, R, D]``: the yardstick an approximation of softmax attention should beat."""
    picked = _rows(problem, rows)
    allowed = problem.pattern.mask(problem.seq_len, problem.kv_len, rows=picked).to(torch.float64)  # [R, Nk]
    weights = allowed / allowed.sum(-1, keepdim=True).clamp(min=1.0)  # [R, Nk]
    out = torch.zeros(problem.batch, problem.kv_heads, len(picked), v.shape[-1], dtype=torch.float64)
    for c0, c1 in _chunks(problem, len(picked)):
        out += weights[:, c0:c1] @ v[:, :, c0:c1].to("cpu", torch.float64)  # [B, Hkv, R, D]
    g = problem.heads // problem.kv_heads
    return out.repeat_interleave(g, dim=1)  # [B, H, R, D]
