"""Linear attention: the softmax kernel replaced by a feature map (Katharopoulos et al. 2020).

The idea
--------
Softmax attention weighs key ``j`` for query ``i`` by ``exp(q_i·k_j·scale)``. Replace that
similarity by a product of positive features, ``sim(q, k) = φ(q)·φ(k)`` with
``φ(x) = elu(x) + 1`` applied elementwise (positive, so every weight is positive). Then

    out_i = Σ_j φ(q_i)·φ(k_j) v_j / Σ_j φ(q_i)·φ(k_j)
          = φ(q_i) (Σ_j φ(k_j) v_jᵀ) / φ(q_i)·(Σ_j φ(k_j))

and the two sums over keys — a ``[D, D]`` matrix ``KV`` and a ``[D]`` vector ``z`` — are shared
by every query. This is a *different function* from softmax attention, not an approximation with
a tolerance: ``exact = False`` and :meth:`Linear.reference` is its own formula computed the
quadratic way in float64 (``A = φ(Q)φ(K)ᵀ``, masked, ``out = A V / rowsum(A)``). The softmax
``scale`` is not used: φ is applied to the raw ``q`` and ``k`` (scaling both by a constant would
change φ's values, but not the idea; the paper uses no scale).

Causal (bottom-right aligned: query ``i`` sees keys ``j <= i + Nk - Nq``) the sums become prefix
sums. Keys before the first query's position are summed once into an initial state (or, when
``Nq > Nk``, the first ``Nq - Nk`` queries see nothing and output zeros); the remaining queries
and keys pair up one to one and are cut into chunks of ``C``:

    within a chunk:      A = φ(Q_c)φ(K_c)ᵀ, lower-triangular      [C, C]   (quadratic, small)
    before the chunk:    S_c = state + Σ_{c' < c} φ(K_c')ᵀ V_c'    [D, D]   (exclusive cumsum)
    out_c = (A V_c + φ(Q_c) S_c) / (rowsum(A) + φ(Q_c)·z_c)

All chunks are computed at once (no Python loop over chunks). Everything runs in float32 for
low-precision inputs; the output has the input dtype. Windows and block layouts are not
supported: with them the key sums are no longer shared prefixes.

Cost
----
Non-causal: time ``O((Nq + Nk)·D²)``, extra memory ``O(D²)`` per head beyond the features.
Causal: time ``O(N·C·D + N·D²)``, extra memory ``O(N·D²/C + N·C)`` per head for the
per-chunk states and the intra-chunk scores. Both linear in ``N``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench import Growth, Implementation, Problem, register
from attnbench.contract import AttentionFn
from attnbench.reference import expand_kv
from attnbench.work import Work, io_bytes

Tensor = torch.Tensor


def feature_map(x: Tensor) -> Tensor:
    """``φ(x) = elu(x) + 1``: positive, ``≈ x + 1`` for positive ``x``, ``e^x`` for negative."""
    return F.elu(x) + 1.0


def _divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with rows of zero weight (no key seen) giving zeros."""
    return num / den.masked_fill(den == 0, 1.0)


def linear_full(fq: Tensor, fk: Tensor, v: Tensor) -> Tensor:
    """Non-causal: ``fq`` ``[B, Hkv, R, D]``, ``fk``/``v`` ``[B, Hkv, Nk, D]`` → ``[B, Hkv, R, D]``."""
    kv = fk.transpose(-1, -2) @ v  # [B, Hkv, D, D]  Σ_j φ(k_j) v_jᵀ
    z = fk.sum(dim=-2, keepdim=True).transpose(-1, -2)  # [B, Hkv, D, 1]  Σ_j φ(k_j)
    return _divide(fq @ kv, fq @ z)  # [B, Hkv, R, D]


def linear_causal(fq: Tensor, fk: Tensor, v: Tensor, chunk: int, kv0: Tensor, z0: Tensor) -> Tensor:
    """Causal with equal lengths ``L``: ``fq`` ``[B, Hkv, G, L, D]``, ``fk``/``v`` ``[B, Hkv, L, D]``,
    initial state ``kv0`` ``[B, Hkv, D, D]``, ``z0`` ``[B, Hkv, D, 1]`` → ``[B, Hkv, G, L, D]``."""
    b, hkv, g, length, d = fq.shape
    nc = -(-length // chunk)
    pad = nc * chunk - length
    fq = F.pad(fq, (0, 0, 0, pad))  # [B, Hkv, G, nc·C, D]
    fk = F.pad(fk, (0, 0, 0, pad))  # padded keys: zero features, zero weight
    v = F.pad(v, (0, 0, 0, pad))
    qc = fq.view(b, hkv, g, nc, chunk, d).transpose(2, 3).reshape(b, hkv, nc, g * chunk, d)  # [B, Hkv, nc, G·C, D]
    kc = fk.view(b, hkv, nc, chunk, d)  # [B, Hkv, nc, C, D]
    vc = v.view(b, hkv, nc, chunk, d)  # [B, Hkv, nc, C, D]
    future = torch.ones(chunk, chunk, dtype=torch.bool, device=fq.device).triu(1)  # [C, C] key after query
    a = (qc @ kc.transpose(-1, -2)).view(b, hkv, nc, g, chunk, chunk).masked_fill(future, 0.0)
    a = a.view(b, hkv, nc, g * chunk, chunk)  # [B, Hkv, nc, G·C, C] intra-chunk weights
    kv = kc.transpose(-1, -2) @ vc  # [B, Hkv, nc, D, D] each chunk's Σ φ(k) vᵀ
    z = kc.sum(dim=-2).unsqueeze(-1)  # [B, Hkv, nc, D, 1]
    kv_before = kv0.unsqueeze(2) + F.pad(kv.cumsum(dim=2), (0, 0, 0, 0, 1, -1))  # [B, Hkv, nc, D, D] exclusive
    z_before = z0.unsqueeze(2) + F.pad(z.cumsum(dim=2), (0, 0, 0, 0, 1, -1))  # [B, Hkv, nc, D, 1]
    num = a @ vc + qc @ kv_before  # [B, Hkv, nc, G·C, D]
    den = a.sum(dim=-1, keepdim=True) + qc @ z_before  # [B, Hkv, nc, G·C, 1]
    out = _divide(num, den).view(b, hkv, nc, g, chunk, d).transpose(2, 3)  # [B, Hkv, G, nc, C, D]
    return out.reshape(b, hkv, g, nc * chunk, d)[:, :, :, :length]  # [B, Hkv, G, L, D]


def linear_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool, chunk: int) -> Tensor:
    """``q`` ``[B, H, Nq, D]``, ``k``/``v`` ``[B, Hkv, Nk, D]`` → ``[B, H, Nq, D]``."""
    b, h, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = h // hkv
    work = torch.float32 if q.dtype in (torch.bfloat16, torch.float16) else q.dtype
    fq = feature_map(q.to(work)).reshape(b, hkv, g, nq, d)  # [B, Hkv, G, Nq, D]
    fk = feature_map(k.to(work))  # [B, Hkv, Nk, D]
    vw = v.to(work)  # [B, Hkv, Nk, D]
    if not causal:
        out = linear_full(fq.reshape(b, hkv, g * nq, d), fk, vw)  # [B, Hkv, G·Nq, D]
        return out.reshape(b, h, nq, d).to(q.dtype)
    offset = nk - nq  # query i is level with key i + offset
    if offset >= 0:  # keys before the first query's position: every query sees them
        kv0 = fk[:, :, :offset].transpose(-1, -2) @ vw[:, :, :offset]  # [B, Hkv, D, D]
        z0 = fk[:, :, :offset].sum(dim=-2).unsqueeze(-1)  # [B, Hkv, D, 1]
        out = linear_causal(fq, fk[:, :, offset:], vw[:, :, offset:], chunk, kv0, z0)  # [B, Hkv, G, Nq, D]
    else:  # the first -offset queries see no key: zeros
        kv0 = fk.new_zeros(b, hkv, d, d)
        z0 = fk.new_zeros(b, hkv, d, 1)
        seen = linear_causal(fq[:, :, :, -offset:], fk, vw, chunk, kv0, z0)  # [B, Hkv, G, Nk, D]
        out = F.pad(seen, (0, 0, -offset, 0))  # [B, Hkv, G, Nq, D]
    return out.reshape(b, h, nq, d).to(q.dtype)


def linear_flops(problem: Problem, chunk: int) -> float:
    """FLOPs of one forward call. Per key/value head: ``φ(K)ᵀV`` (``2·Nk·D²``) and ``Σφ(k)``;
    per query head: ``φ(q)·KV`` and ``φ(q)·z`` (``2·Nq·D² + 2·Nq·D``). Causal adds, per query head,
    the intra-chunk weights and their product with V (``4·Nq·C·D``) and, per key/value head, the
    running sums of the chunks' states (``Nk/C · D²``)."""
    b, h, hkv, d = problem.batch, problem.heads, problem.kv_heads, problem.head_dim
    nq, nk = problem.seq_len, problem.kv_len
    per_kv = 2 * nk * d * d + nk * d
    per_q = 2 * nq * d * d + 2 * nq * d
    if problem.causal:
        per_q += 4 * nq * chunk * d
        per_kv += -(-nk // chunk) * d * d
    return float(b * (hkv * per_kv + h * per_q))


@register("linear")
class Linear(Implementation):
    description = "Kernelized linear attention, φ(x)=elu(x)+1 (Katharopoulos et al. 2020): O(N), not softmax"
    exact = False
    computes = ("kernelized",)
    approximates = "softmax attention"
    devices = ("cpu", "cuda")
    dtypes = ("float32", "bfloat16", "float16")
    features = frozenset({"causal", "gqa", "cross", "backward"})
    growth = Growth(1.0, 1.0)
    #: Rows per chunk of the causal prefix sums.
    chunk: int = 64

    def prepare(self, problem: Problem) -> AttentionFn:
        causal, chunk = problem.causal, self.chunk

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return linear_attention(q, k, v, causal, chunk)

        return run

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return self.prepare(problem)(q, k, v)

    def work(self, problem: Problem) -> Work:
        """Its own FLOPs, not softmax attention's: the matrix products of :func:`linear_attention`
        (the feature maps' elementwise work is not counted, as softmax's exponentials are not)."""
        return Work(linear_flops(problem, self.chunk) * problem.kind.flops_factor, io_bytes(problem))

    def reference(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem, rows: Tensor | None = None) -> Tensor:
        """This implementation's own definition, the quadratic way in float64: ``A = φ(q)φ(k)ᵀ``
        (zero where the pattern hides a pair), ``out = A v / rowsum(A)``; rows that see no key
        are zero. ``[B, H, R, D]`` for the query ``rows`` (all when None)."""
        q64 = q.to("cpu", torch.float64)  # [B, H, Nq, D] (differentiable)
        if rows is not None:
            q64 = q64[:, :, rows]  # [B, H, R, D]
        k64 = expand_kv(k.to("cpu", torch.float64), problem.heads)  # [B, H, Nk, D]
        v64 = expand_kv(v.to("cpu", torch.float64), problem.heads)  # [B, H, Nk, D]
        a = feature_map(q64) @ feature_map(k64).transpose(-1, -2)  # [B, H, R, Nk]
        if not problem.pattern.is_full:
            a = a.masked_fill(~problem.pattern.mask(problem.seq_len, problem.kv_len, rows=rows), 0.0)
        return _divide(a @ v64, a.sum(dim=-1, keepdim=True))  # [B, H, R, D]
