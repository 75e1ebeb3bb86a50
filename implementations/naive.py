"""Naive attention: the textbook formula, one matrix at a time.

The algorithm
-------------
Attention maps queries ``Q [Nq, D]``, keys ``K [Nk, D]`` and values ``V [Nk, D]`` (per batch
entry and head) to

    S = Q Kᵀ · scale            scores,        [Nq, Nk]
    S = S + M                   mask: 0 where a pair is computed, -inf elsewhere
    P = softmax(S) along keys   probabilities, [Nq, Nk]
    O = P V                     output,        [Nq, D]

with ``scale = 1/sqrt(D)``. Every step is one PyTorch operation, so autograd provides the
backward pass for free. The mask ``M`` comes from the problem's pattern (causal, sliding
window, block layout: see :mod:`attnbench.case.patterns`), so this implementation computes every
pattern — but always at the price of the full, dense computation.

Soft-capping, ALiBi and sinks (:mod:`attnbench.case.variants`) are applied as written: the
scores capped with ``tanh``, the bias added, the sink joined to the softmax as one more column
that is dropped after it.

A query row that may attend no key (possible with causal cross attention when ``Nq > Nk``)
would be ``softmax`` of all ``-inf``, i.e. NaN; such rows are given zero scores before the
softmax and zero probabilities after it, so that they output zeros.

Grouped-query attention (``Hkv < H`` key/value heads) is handled without copying keys: the
``G = H/Hkv`` query heads that share a key/value head are stacked along the row axis,
``q [B, H, Nq, D] → [B, Hkv, G·Nq, D]``, and multiplied by that head's keys once.

Cost
----
Time ``O(Nq·Nk·D)`` per head: two matrix products of ``2·Nq·Nk·D`` floating-point operations
each. Extra memory ``O(Nq·Nk)`` per head: the scores and the probabilities are both
materialized (two ``[B, H, Nq, Nk]`` float32 tensors, plus the boolean mask). At ``N = 4096``
with 8 heads that is 1 GiB; this quadratic memory is what every other implementation here
avoids. With low-precision inputs the matrix products run in the input dtype while the
softmax runs in float32.

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnbench import Growth, Implementation, Problem, register
from attnbench.case.kvcache import KVCache
from attnbench.case.variants import alibi_bias, alibi_decode, case_sinks
from attnbench.plugins.contract import ALL_FEATURES, AttentionFn

Tensor = torch.Tensor


@dataclass(frozen=True)
class ScoreChanges:
    """What a case does to the scores (:mod:`attnbench.case.variants`), as float32 tensors shaped
    for the grouped scores ``[B, Hkv, G, Nq, Nk]``."""

    softcap: float = 0.0
    bias: Tensor | None = None  # [Hkv, G, Nq, Nk] ALiBi's −slope·|p − j| ([B, Hkv, G, S, Lmax] decoding)
    sink: Tensor | None = None  # [1, Hkv, G, 1, 1] sink logits

    @classmethod
    def of(cls, problem: Problem, cache: KVCache | None = None) -> ScoreChanges | None:
        """The changes of ``problem``; decoding against ``cache``, ALiBi's positions are each
        sequence's own (its new tokens at the end of its attended ones)."""
        if not problem.varies_scores:
            return None
        hkv, g, device = problem.kv_heads, problem.heads // problem.kv_heads, problem.device
        per_head = (hkv, g, 1, 1)
        bias = None
        if problem.bias == "alibi" and cache is not None:
            s, longest = problem.seq_len, int(cache.attended.max())
            bias = alibi_decode(problem.heads, cache.attended.cpu(), s, longest)  # [B, H, S, Lmax]
            bias = bias.view(-1, hkv, g, s, longest).to(device, torch.float32)
        elif problem.bias == "alibi":
            nq, nk = problem.seq_len, problem.kv_len
            bias = alibi_bias(problem.heads, nq, nk).view(hkv, g, nq, nk).to(device, torch.float32)
        sink = case_sinks(problem)
        return cls(problem.softcap, bias, None if sink is None else sink.view(1, *per_head))


def naive_attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, mask: Tensor | None, changes: ScoreChanges | None = None
) -> Tensor:
    """``softmax(q kᵀ · scale, masked) v`` with the full score matrix.

    ``q`` is ``[B, H, Nq, D]``, ``k``/``v`` are ``[B, Hkv, Nk, D]``, ``mask`` is ``[Nq, Nk]``
    bool (True where a pair is computed; ``[B, 1, 1, Nq, Nk]`` for a mask per batch entry) or
    None for full attention; ``changes`` soft-caps and biases the scores, and adds a sink column
    to the softmax that is dropped after it.
    """
    b, h, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = h // hkv
    qg = q.reshape(b, hkv, g * nq, d)  # [B, Hkv, G·Nq, D] (query head h = hkv·G + g)
    scores = torch.matmul(qg, k.transpose(-1, -2))  # [B, Hkv, G·Nq, Nk]
    scores = scores.float() * scale  # float32 statistics for low-precision inputs
    scores = scores.view(b, hkv, g, nq, nk)  # [B, Hkv, G, Nq, Nk]
    if changes is not None and changes.softcap:
        scores = torch.tanh(scores / changes.softcap) * changes.softcap
    if changes is not None and changes.bias is not None:
        scores = scores + changes.bias
    empty = None
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # mask [Nq, Nk] broadcasts
        empty = ~mask.any(dim=-1, keepdim=True)  # [Nq, 1] rows that see no key
        if bool(empty.any()):
            scores = scores.masked_fill(empty, 0.0)
        else:
            empty = None
    if changes is not None and changes.sink is not None:  # the sink: a column without a value
        sink = changes.sink.expand(b, hkv, g, nq, 1)  # [B, Hkv, G, Nq, 1]
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :nk]
    else:
        probs = torch.softmax(scores, dim=-1)  # [B, Hkv, G, Nq, Nk]
    if empty is not None:
        probs = probs.masked_fill(empty, 0.0)
    probs = probs.view(b, hkv, g * nq, nk).to(v.dtype)  # [B, Hkv, G·Nq, Nk]
    out = torch.matmul(probs, v)  # [B, Hkv, G·Nq, Dv]
    return out.view(b, h, nq, v.shape[-1])  # [B, H, Nq, Dv]


@register("naive")
class Naive(Implementation):
    description = "Textbook softmax(QKᵀ·scale + mask)·V with the full score matrix materialized"
    exact = True
    computes = ("full", "causal", "window", "block-sparse")
    devices = ("cpu", "cuda")
    dtypes = ("float32", "bfloat16", "float16")
    features = ALL_FEATURES  # every pattern and variant a case can ask for
    growth = Growth(2.0, 2.0)

    def prepare(self, problem: Problem) -> AttentionFn:
        """Build the dense ``[Nq, Nk]`` mask (and an ALiBi bias) once, outside the timed call."""
        pattern = problem.pattern
        mask = None if pattern.is_full else pattern.mask(problem.seq_len, problem.kv_len, device=problem.device)
        scale, changes = problem.scale, ScoreChanges.of(problem)

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return naive_attention(q, k, v, scale, mask, changes)

        return run

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return self.prepare(problem)(q, k, v)

    def prepare_decode(self, problem: Problem, cache: KVCache) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """A decode step: the formula over the cache up to the longest sequence, each sequence's
        invalid tail masked (a paged cache gathered first)."""
        from attnbench.implementations.sdpa import decode_keys

        keys, mask = decode_keys(problem, cache)  # mask [B, 1, S, Lmax] -> per batch [B, 1, 1, S, Lmax]
        scale = problem.scale
        per_batch = None if mask is None else mask[:, :, None]
        changes = ScoreChanges.of(problem, cache)

        def step(q: Tensor, k_new: Tensor, v_new: Tensor) -> Tensor:
            cache.append(k_new, v_new)
            k, v = keys()  # [B, Hkv, Lmax, D]
            return naive_attention(q, k, v, scale, per_batch, changes)  # [B, H, S, D]

        return step
