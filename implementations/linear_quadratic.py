"""Linear attention computed the quadratic way: the peer that shows what the O(N) form saves.

The idea
--------
:mod:`~attnbench.implementations.linear` computes ``out_i = Σ_j φ(q_i)·φ(k_j) v_j / Σ_j φ(q_i)·φ(k_j)``
(``φ(x) = elu(x) + 1``, Katharopoulos et al. 2020) by reassociating the product:
``φ(Q) (φ(K)ᵀ V)`` costs ``O(N·D²)``. This implementation computes the same function as written,
``(φ(Q) φ(K)ᵀ) V``, the form the paper's linear one is measured against:

    A   = φ(Q_b) φ(K)ᵀ             [BH, bq, Nk]   zero where the pattern hides a pair
    out = A [V | 1]                [BH, bq, D+1]  numerator and denominator in one product
    out = numerator / denominator

Queries are taken ``bq`` rows at a time, so ``A`` exists for one block only. Causal attention
(bottom-right aligned) gives block ``[i, j)`` the keys up to its last row's position and zeroes
the triangle above its diagonal; rows that see no key output zeros. Query heads that share a
key head (``G = H/Hkv``) are stacked as ``G·bq`` rows of one product. Everything runs in float32
(as :mod:`~attnbench.implementations.linear` does); the output has the input dtype. Its
definition, and so its reference, is linear attention's own (:meth:`Linear.reference`).

Cost
----
``2·Nk·D`` FLOPs per query row for ``A`` and ``2·Nk·(D+1)`` for ``A [V | 1]``: ``O(Nq·Nk·D)``
time, softmax attention's products without its exponentials (causal: about half, plus a
``bq``-wide diagonal band per block). Extra memory: ``A`` for one block (``bq`` shrinks so that it
stays under :data:`BLOCK_BYTES`), the float32 features and ``[V | 1]``: linear in ``N``. Against
it the reassociated form's ``4·D²`` FLOPs per row win by ``≈ Nk/D`` (64× at N = 4K, D = 64).

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

import torch

from attnbench import Growth, Problem, register
from attnbench.case.work import Work, io_bytes
from attnbench.implementations.linear import Linear, _features, _with_ones
from attnbench.plugins.contract import AttentionFn

Tensor = torch.Tensor

#: The largest ``A`` of one block (float32).
BLOCK_BYTES = 64 << 20


def rows_per_block(rows_per_query: int, nk: int, most: int) -> int:
    """``most`` query rows per block, fewer (a multiple of 32, at least 32) where the block's
    ``A`` of ``rows_per_query × bq × Nk`` float32 would exceed :data:`BLOCK_BYTES`."""
    fit = BLOCK_BYTES // max(1, rows_per_query * nk * 4)
    return max(1, min(most, max(32, fit // 32 * 32)))


def quadratic_linear_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool, block: int) -> Tensor:
    """``q`` ``[B, H, Nq, D]``, ``k``/``v`` ``[B, Hkv, Nk, D]`` → ``[B, H, Nq, D]`` in ``q``'s dtype."""
    b, h, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = h // hkv
    bh = b * hkv
    offset = nk - nq
    fq = _features(q).view(bh, g, nq, d)  # [BHkv, G, Nq, D] float32
    fkt = _features(k).reshape(bh, nk, d).transpose(1, 2)  # [BHkv, D, Nk]
    v1 = _with_ones(v.reshape(bh, nk, d))  # [BHkv, Nk, D+1] float32
    out = torch.zeros(bh, g, nq, d, dtype=q.dtype, device=q.device)  # [BHkv, G, Nq, D]
    bq = rows_per_block(bh * g, nk, block)
    for i in range(0, nq, bq):
        j = min(nq, i + bq)
        r = j - i
        keys = max(0, min(nk, j + offset)) if causal else nk
        if keys == 0:
            continue  # no row of the block sees a key: zeros
        a = torch.bmm(fq[:, :, i:j].reshape(bh, g * r, d), fkt[:, :, :keys])  # [BHkv, G·r, keys]
        if causal:
            first = max(0, i + offset)  # columns a row of the block may be denied
            cols = torch.arange(first, keys, device=q.device)  # [w]
            hidden = cols[None, :] > torch.arange(i, j, device=q.device)[:, None] + offset  # [r, w]
            a.view(bh, g, r, keys)[..., first:keys].masked_fill_(hidden, 0.0)
        nd = torch.bmm(a, v1[:, :keys]).view(bh, g, r, d + 1)  # [BHkv, G, r, D+1]
        den = nd[..., d:]
        out[:, :, i:j] = nd[..., :d] / den.masked_fill(den == 0, 1.0)
    return out.view(b, h, nq, d)


@register("linear_quadratic")
class LinearQuadratic(Linear):
    description = "Linear attention's function the quadratic way, (φ(Q)φ(K)ᵀ)V in row blocks: linear's O(N²) peer"
    features = frozenset({"causal", "gqa", "cross"})
    growth = Growth(2.0, 1.0)
    #: Query rows per block at most (fewer where ``A`` would exceed :data:`BLOCK_BYTES`).
    row_block: int = 256

    def prepare(self, problem: Problem) -> AttentionFn:
        causal, block = problem.causal, self.row_block

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return quadratic_linear_attention(q, k, v, causal, block)

        return run

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return self.prepare(problem)(q, k, v)

    def work(self, problem: Problem) -> Work:
        """``4·D + 2`` FLOPs per pair the pattern keeps (``A``, then ``A [V | 1]``)."""
        pairs = problem.kind.pairs(problem)  # over the batch
        return Work((4.0 * problem.head_dim + 2.0) * problem.heads * pairs, io_bytes(problem))
