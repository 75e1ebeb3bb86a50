"""The float64 reference: masked softmax attention computed the plain way on the CPU.

Attention rows are independent, so the reference can be computed for a sample of query rows
only; that is exact for those rows and is how long sequences are checked.
"""

from __future__ import annotations

import torch
from attnbench.problem import Problem

Tensor = torch.Tensor


def expand_kv(k: Tensor, heads: int) -> Tensor:
    """Repeat ``[B, Hkv, N, D]`` keys or values to ``[B, heads, N, D]`` (grouped-query attention:
    query head ``h`` reads kv head ``h // (heads // Hkv)``)."""
    group = heads // k.shape[1]
    return k if group == 1 else k.repeat_interleave(group, dim=1)


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, problem: Problem, rows: Tensor | None = None) -> Tensor:
    """``softmax(q kᵀ · scale + mask) v`` in float64 on the CPU for ``problem``'s pattern.

    Returns ``[B, H, R, D]`` for the ``R`` query ``rows`` (all rows when None). Rows that may
    attend no key are zero.
    """
    q64 = q.to("cpu", torch.float64)  # [B, H, Nq, D] (differentiable: used for gradients too)
    if rows is not None:
        q64 = q64[:, :, rows]  # [B, H, R, D]
    k64 = expand_kv(k.to("cpu", torch.float64), problem.heads)  # [B, H, Nk, D]
    v64 = expand_kv(v.to("cpu", torch.float64), problem.heads)  # [B, H, Nk, D]
    mask = problem.pattern.mask(problem.seq_len, problem.kv_len, rows=rows)  # [R, Nk]
    empty = ~mask.any(dim=-1, keepdim=True)  # [R, 1] rows that see no key
    scores = (q64 @ k64.transpose(-1, -2)) * problem.scale  # [B, H, R, Nk]
    scores = scores.masked_fill(~mask, float("-inf")).masked_fill(empty, 0.0)
    weights = torch.softmax(scores, dim=-1).masked_fill(empty, 0.0)  # empty rows: 0
    return weights @ v64  # [B, H, R, D]


def sample_rows(n: int, limit: int, seed: int = 0) -> Tensor | None:
    """A seeded sample of ``limit`` query rows out of ``n`` (sorted), or None for all rows when
    ``n <= limit``. The last row is always included (it sees the most keys under causal)."""
    if n <= limit:
        return None
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randperm(n - 1, generator=gen)[: limit - 1]
    return torch.cat([picks, torch.tensor([n - 1])]).sort().values
