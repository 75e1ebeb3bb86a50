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

In the causal recurrence both sums come out of one product by appending a column of ones to
``V``: with ``V₁ = [V | 1]`` (``[N, D+1]``), ``S = φ(K)ᵀ V₁ = [KV | z]`` and
``φ(Q) S = [numerator | denominator]``.

The algorithm
-------------
Non-causal: ``KV`` and ``z`` are accumulated over blocks of ``pass_block`` keys
(``KV += φ(K_b)ᵀ V_b``), then every block of queries writes ``φ(Q_b) KV`` straight into the output
and divides it by ``φ(Q_b) z`` in place: two passes over the sequence in blocks that stay in
cache, each block a few large matrix products — no ``N``-sized temporary besides the output.

Causal (bottom-right aligned: query ``i`` sees keys ``j <= i + Nk - Nq``) the sums become prefix
sums. Keys before the first query's position are summed once into the initial state (or, when
``Nq > Nk``, the first ``Nq - Nk`` queries see nothing and output zeros); the remaining queries
and keys pair up one to one and are cut into chunks of ``C``:

    within a chunk:      A = φ(Q_c)φ(K_c)ᵀ, lower-triangular      [C, C]   (quadratic, small)
    before the chunk:    S_c = state + Σ_{c' < c} φ(K_c')ᵀ V₁_c'   [D, D+1] (exclusive cumsum)
    [num | den]_c = A V₁_c + φ(Q_c) S_c,   out_c = num / den

A block of ``block`` rows (``block / C`` chunks) is computed at once — batched products over its
chunks, an exclusive cumulative sum of their states — and the state is carried from block to
block, so the chunk states never exist for the whole sequence. Queries of the ``G = H/Hkv``
heads that share a key head are stacked as ``G·C`` rows of a chunk.

Everything runs in float32 for low-precision inputs, the output has the input dtype. Under
autograd the same formulas run without the in-place buffers (gradients through autograd).
Windows and block layouts are not supported: with them the key sums are no longer shared
prefixes.

Cost
----
Non-causal: ``4·D²`` FLOPs per row (``2·D²`` to build ``KV``, as much to apply it), time
``O((Nq + Nk)·D²)``, extra memory ``O(block·D)`` beyond the output: linear in ``N`` with a
constant per-row cost, since no temporary grows with ``N`` (a temporary of tens of MB would cost a
page fault per 4 KB page on every call). Causal: ``4·C·(D+1)`` FLOPs per row more for the
intra-chunk products, ``1 + C/D`` times the non-causal products (2× for ``C = 64``, ``D = 64``, measured 1.1-1.6× the
non-causal time since both share the feature maps and the passes over memory), plus the chunk
states' exclusive prefix sum (one ``[nc, nc]`` triangular product per block, ``2·(block/C)·D²/C``
FLOPs per row: ``torch.cumsum`` along that dimension walks it element by element and costs more);
extra memory ``O(block·(C + D²/C))``. Both linear in ``N``.

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench import Growth, Implementation, Problem, register
from attnbench.case.reference import expand_kv
from attnbench.case.work import Work, io_bytes
from attnbench.implementations import _buffers
from attnbench.plugins.contract import AttentionFn

Tensor = torch.Tensor


def feature_map(x: Tensor) -> Tensor:
    """``φ(x) = elu(x) + 1``: positive, ``≈ x + 1`` for positive ``x``, ``e^x`` for negative."""
    return F.elu(x) + 1.0


def _features(x: Tensor) -> Tensor:
    """``φ(x)`` in float32 as a new tensor, as ``exp(min(x, 0)) + max(x, 0)`` — the same value as
    ``elu(x) + 1`` (exactly ``e^x`` below 0, ``x + 1`` above), in about half the time of
    ``elu``, whose ``expm1`` is slow."""
    x = x.float()
    return torch.clamp_max(x, 0.0).exp_().add_(x.clamp_min(0.0))


def _divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with rows of zero weight (no key seen) giving zeros."""
    return num / den.masked_fill(den == 0, 1.0)


def _with_ones(v: Tensor) -> Tensor:
    """``[..., N, D]`` → ``[..., N, D+1]`` float32: ``V₁ = [V | 1]``."""
    out = v.new_empty(*v.shape[:-1], v.shape[-1] + 1, dtype=torch.float32)
    out[..., :-1] = v
    out[..., -1] = 1.0
    return out


# -- without autograd: blocks, buffers, in place ---------------------------------------------------


def key_state(k3: Tensor, v3: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """``KV = Σ_j φ(k_j) v_jᵀ`` ``[BHkv, D, D]`` and ``z = Σ_j φ(k_j)`` ``[BHkv, D, 1]`` (float32)
    over ``k3``/``v3`` ``[BHkv, N, D]``, in blocks of ``block`` keys."""
    bh, n, d = k3.shape
    kv = k3.new_zeros(bh, d, d, dtype=torch.float32)
    z = k3.new_zeros(bh, d, 1, dtype=torch.float32)
    for j0 in range(0, n, block):
        fk = _features(k3[:, j0 : j0 + block])  # [BHkv, b, D]
        kv.baddbmm_(fk.transpose(1, 2), v3[:, j0 : j0 + block].float())  # [BHkv, D, D]
        z.add_(fk.sum(dim=1).unsqueeze(-1))  # [BHkv, D, 1]
    return kv, z


def apply_state(q3: Tensor, kv: Tensor, z: Tensor, out3: Tensor, block: int) -> None:
    """``out3 = φ(q) KV / φ(q)·z``, ``q3``/``out3`` ``[BHkv, R, D]``: the numerator is written
    straight into the output, then divided in place."""
    for i0 in range(0, q3.shape[1], block):
        fq = _features(q3[:, i0 : i0 + block])  # [BHkv, b, D]
        num = torch.bmm(fq, kv, out=out3[:, i0 : i0 + block])  # [BHkv, b, D]
        den = torch.bmm(fq, z)  # [BHkv, b, 1]
        num.div_(den.masked_fill_(den == 0, 1.0))


def causal_rows(fq: Tensor, fk: Tensor, v1: Tensor, s: Tensor, tril: Tensor, chunk: int) -> Tensor:
    """One block of the causal recurrence. ``fq`` ``[BHkv, G, L, D]``, ``fk`` ``[BHkv, L, D]`` and
    ``v1`` ``[BHkv, L, D+1]`` with ``L`` a multiple of ``chunk`` (padded keys have zero features);
    ``s`` ``[BHkv, D, D+1]`` the state before the block, advanced in place. Returns
    ``[num | den]`` ``[BHkv, nc, G, C, D+1]`` (``nc = L / chunk``)."""
    bh, g, length, d = fq.shape
    nc = length // chunk
    qc = fq.view(bh, g, nc, chunk, d).transpose(1, 2).reshape(bh * nc, g * chunk, d)  # [BHkv·nc, G·C, D]
    kc = fk.reshape(bh * nc, chunk, d)  # [BHkv·nc, C, D]
    vc = v1.reshape(bh * nc, chunk, d + 1)  # [BHkv·nc, C, D+1]
    a = torch.bmm(qc, kc.transpose(1, 2))  # [BHkv·nc, G·C, C]
    a.view(bh * nc, g, chunk, chunk).mul_(tril)  # causal within the chunk (diagonal kept)
    states = torch.bmm(kc.transpose(1, 2), vc).view(bh, nc, d, d + 1)  # [BHkv, nc, D, D+1] per chunk
    # exclusive prefix sums over the chunks as one product with a strictly lower-triangular
    # [nc, nc] matrix (torch.cumsum along dim 1 walks it element by element, slower than this)
    below = torch.ones(nc, nc, device=fq.device).tril_(-1)  # [nc, nc]: c' < c
    before = torch.matmul(below, states.view(bh, nc, d * (d + 1))).view(bh, nc, d, d + 1)  # [BHkv, nc, D, D+1]
    total = before[:, -1] + states[:, -1]  # [BHkv, D, D+1] the block's sum
    before.add_(s[:, None])  # the state before the block
    s.add_(total)
    r = torch.baddbmm(torch.bmm(a, vc), qc, before.view(bh * nc, d, d + 1))  # [BHkv·nc, G·C, D+1]
    return r.view(bh, nc, g, chunk, d + 1)


def linear_attention_fast(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, chunk: int, block: int, pass_block: int
) -> Tensor:
    """Without autograd: ``q`` ``[B, H, Nq, D]``, ``k``/``v`` ``[B, Hkv, Nk, D]`` → ``[B, H, Nq, D]``;
    ``block`` rows per step of the causal recurrence, ``pass_block`` per step of a plain pass."""
    b, h, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = h // hkv
    q4 = q.reshape(b * hkv, g, nq, d)  # [BHkv, G, Nq, D]
    k3, v3 = k.reshape(b * hkv, nk, d), v.reshape(b * hkv, nk, d)  # [BHkv, Nk, D]
    out = _buffers.fresh((b * hkv, g, nq, d), torch.float32, q.device)  # [BHkv, G, Nq, D]
    if not causal:
        kv, z = key_state(k3, v3, pass_block)  # [BHkv, D, D], [BHkv, D, 1]
        apply_state(q4.reshape(b * hkv, g * nq, d), kv, z, out.view(b * hkv, g * nq, d), pass_block)
        return out.view(b, h, nq, d).to(q.dtype)
    offset = nk - nq  # query i is level with key i + offset
    first = max(0, -offset)  # queries before it see no key
    out[:, :, :first] = 0.0
    s = k3.new_zeros(b * hkv, d, d + 1, dtype=torch.float32)  # [KV | z]
    if offset > 0:  # keys before the first query's position
        kv, z = key_state(k3[:, :offset], v3[:, :offset], pass_block)
        s[..., :d], s[..., d:] = kv, z
    block = max(chunk, block // chunk * chunk)
    tril = torch.ones(chunk, chunk, device=q.device).tril_()  # [C, C]
    for i0 in range(first, nq, block):
        rows = min(block, nq - i0)
        length = -(-rows // chunk) * chunk
        j0 = i0 + offset
        fq = _features(q4[:, :, i0 : i0 + rows])  # [BHkv, G, rows, D]
        fk = _features(k3[:, j0 : j0 + rows])  # [BHkv, rows, D]
        v1 = _with_ones(v3[:, j0 : j0 + rows])  # [BHkv, rows, D+1]
        if length > rows:  # pad to whole chunks: padded keys get zero features and values
            fq, fk, v1 = (F.pad(x, (0, 0, 0, length - rows)) for x in (fq, fk, v1))
        r = causal_rows(fq, fk, v1, s, tril, chunk)  # [BHkv, nc, G, C, D+1]
        target = out[:, :, i0 : i0 + rows]  # [BHkv, G, rows, D]
        if length > rows:
            r = r.transpose(1, 2).reshape(b * hkv, g, length, d + 1)[:, :, :rows]  # [BHkv, G, rows, D+1]
        else:
            target = target.view(b * hkv, g, length // chunk, chunk, d).transpose(1, 2)  # [BHkv, nc, G, C, D]
        den = r[..., d:]
        torch.div(r[..., :d], den.masked_fill_(den == 0, 1.0), out=target)
    return out.view(b, h, nq, d).to(q.dtype)


# -- with autograd: the same formulas, functional ---------------------------------------------------


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


def linear_attention_autograd(q: Tensor, k: Tensor, v: Tensor, causal: bool, chunk: int) -> Tensor:
    """Differentiable: ``q`` ``[B, H, Nq, D]``, ``k``/``v`` ``[B, Hkv, Nk, D]`` → ``[B, H, Nq, D]``."""
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


def linear_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, chunk: int, block: int = 512, pass_block: int = 2048
) -> Tensor:
    """``q`` ``[B, H, Nq, D]``, ``k``/``v`` ``[B, Hkv, Nk, D]`` → ``[B, H, Nq, D]``: the blocked,
    in-place path without autograd, the functional one with it."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return linear_attention_autograd(q, k, v, causal, chunk)
    return linear_attention_fast(q, k, v, causal, chunk, block, pass_block)


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
    #: Rows per step of the causal recurrence (``block / chunk`` chunks at once, in cache).
    block: int = 512
    #: Rows per step of a plain pass (the non-causal sums, the keys before the first query).
    pass_block: int = 2048

    def prepare(self, problem: Problem) -> AttentionFn:
        causal, chunk, block, pass_block = problem.causal, self.chunk, self.block, self.pass_block

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return linear_attention(q, k, v, causal, chunk, block, pass_block)

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
