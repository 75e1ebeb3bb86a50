"""Work done by one attention call, in floating-point operations.

The convention of FlashAttention's and tritonbench's benchmarks: the forward pass is two matrix
products, ``QKᵀ`` and ``PV``, of ``2·D`` operations per (query, key) pair each, so
``4·B·H·pairs·D``; ``pairs`` is ``Nq·Nk`` for full attention and counts only the pairs really
computed for causal (bottom-right aligned), windowed and block-sparse patterns. The backward
pass counts 2.5× the forward (2.0 for its products, 0.5 for recomputation), forward plus
backward 3.5×.
"""

from __future__ import annotations

from attnbench.problem import Problem

MODE_FACTOR: dict[str, float] = {"forward": 1.0, "backward": 2.5, "forward_backward": 3.5}


def attention_flops(problem: Problem) -> float:
    """FLOPs of the pairs the problem's pattern computes."""
    pairs = problem.pattern.pairs(problem.seq_len, problem.kv_len)
    return 4.0 * problem.batch * problem.heads * pairs * problem.head_dim * MODE_FACTOR[problem.mode]


def dense_flops(problem: Problem) -> float:
    """FLOPs of the same shapes computed densely (every pair), for comparison."""
    pairs = problem.seq_len * problem.kv_len
    return 4.0 * problem.batch * problem.heads * pairs * problem.head_dim * MODE_FACTOR[problem.mode]
