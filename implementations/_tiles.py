"""Tiles of exact attention computed by a fused kernel and merged by their log-sum-exp.

The machinery shared by :mod:`~attnbench.implementations.chunked`,
:mod:`~attnbench.implementations.sliding_window` and :mod:`~attnbench.implementations.block_sparse`
(it registers no implementation of its own).

Merging tiles
-------------
Softmax attention over a set of keys split into parts ``A`` and ``B`` is recovered from the
attention over each part and its log-sum-exp ``L = log Σ_j e^{s_j}`` (FlashAttention's online
softmax, applied to whole tiles):

    L   = log(e^{L_A} + e^{L_B})
    out = out_A · e^{L_A - L} + out_B · e^{L_B - L}      = lerp(out_A, out_B, e^{L_B - L})

so a pattern is computed as a few *pieces*, each a batch of equally shaped tiles, and merged row
by row. A row that sees no key in a piece has ``L = -inf`` there (weight 0); a row that sees no
key at all ends with ``out = 0``.

Pieces and their plan are :mod:`~attnbench.implementations._plan`'s; this module runs them.

Two back ends compute a piece:

* ``fused`` (CPU): PyTorch's own CPU FlashAttention kernel,
  ``aten._scaled_dot_product_flash_attention_for_cpu``, the kernel behind SDPA on the CPU. It
  returns the output and the log-sum-exp, reads strided and grouped-query (``Hkv < H``) inputs
  as they are, and keeps each ``qSplit × 512`` score block in cache, fusing scale, mask, max,
  ``exp`` and sum in one pass: the same work per pair as SDPA itself. Its backward,
  ``…_for_cpu_backward``, given the *global* output and log-sum-exp of the rows, returns exactly
  the piece's contribution to ``dq``, ``dk`` and ``dv`` (``P = exp(S - L)`` and
  ``Δ = rowsum(dO ∘ O)`` are then the global ones), so the backward pass also runs piece by piece
  with the forward's ``O(N)`` memory (:class:`TileAttention`).
* ``matmul``: the same tiles with ``torch.matmul``, float32 softmax statistics and a
  recomputing backward; used on other devices, and selectable for tests.

The dtype and back end a call computes in are :mod:`~attnbench.implementations._dispatch`'s.
ALiBi reaches each piece as an additive mask and a shift of its log-sum-exp
(:mod:`~attnbench.implementations._tile_bias`); its masks carry the query heads, so the plan then
runs once per batch element.

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

from typing import Any

import torch

from attnbench.implementations._buffers import fresh
from attnbench.implementations._plan import Piece, Plan, tiles_as_heads, top_left_causal
from attnbench.implementations._tile_bias import PieceBias, TileBias

Tensor = torch.Tensor
NEG_INF = float("-inf")

_fused_forward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_fused_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


# -- views ----------------------------------------------------------------------------------------


def _rows_view(x: Tensor, p: Piece, by_head: bool) -> Tensor:
    """The piece's query rows of ``x`` ``[BH, N, D]`` (or ``[BH, N]``): ``[BH, n, lq(, D)]`` when
    ``by_head`` else ``[n, BH, lq(, D)]``, a strided view."""
    bh, length = x.shape[0], x.shape[1]
    d = x.shape[2] if x.dim() == 3 else 1
    size: tuple[int, ...] = (bh, p.n, p.lq) if by_head else (p.n, bh, p.lq)
    stride: tuple[int, ...] = (length * d, p.q_step * d, d) if by_head else (p.q_step * d, length * d, d)
    if x.dim() == 3:
        size, stride = (*size, d), (*stride, 1)
    return x.as_strided(size, stride, x.storage_offset() + p.q0 * d)


def _keys_view(x: Tensor, p: Piece, by_head: bool, role: str = "k") -> Tensor:
    """The piece's keys of ``x`` ``[BHkv, Nk, D]``: strided ``[BHkv, n, lk, D]`` (``by_head``) or
    ``[n, BHkv, lk, D]``; gathered (a copy) when the piece lists its keys."""
    bh, length, d = x.shape
    if p.keys is not None:
        buf = p.scratch(role, (bh, p.n * p.lk, d), x)
        picked = torch.index_select(x, 1, p.keys.flatten(), out=buf).view(bh, p.n, p.lk, d)  # [BHkv, n, lk, D]
        return picked if by_head else picked.transpose(0, 1)
    if by_head:
        return x.as_strided((bh, p.n, p.lk, d), (length * d, p.k_step * d, d, 1), x.storage_offset() + p.k0 * d)
    return x.as_strided((p.n, bh, p.lk, d), (p.k_step * d, length * d, d, 1), x.storage_offset() + p.k0 * d)


def _per_tile(x: Tensor | None, by_head: bool) -> Tensor | None:
    """``[n or 1, ...]`` → broadcastable against ``[BH, n, ...]`` or ``[n, BH, ...]``."""
    if x is None:
        return None
    return x.unsqueeze(0) if by_head else x.unsqueeze(1)


# -- back ends ------------------------------------------------------------------------------------


def _fused_piece(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, causal: bool, scale: float
) -> tuple[Tensor, Tensor]:
    out, lse = _fused_forward(q, k, v, 0.0, causal, attn_mask=bias, scale=scale)
    return out, lse


def _group(q: Tensor, heads_kv: int) -> Tensor:
    """``[X, Y, lq, D]`` → ``[X, Ykv, G·lq, D]``: query heads ``y`` read kv head ``y // G``."""
    x, y, lq, d = q.shape
    return q.reshape(x, heads_kv, (y // heads_kv) * lq, d)


def _matmul_scores(
    q: Tensor, k: Tensor, keep: Tensor | None, causal: bool, scale: float, add: Tensor | None = None
) -> Tensor:
    """float32 scores ``[X, Ykv, G, lq, lk]``, -inf where hidden; ``add``: an additive mask in
    the kernel's layout ``[X|1, Y, lq|1, lk]`` (ALiBi's, :mod:`~attnbench.implementations._tile_bias`)."""
    x, y, lq, _ = q.shape
    ykv, lk = k.shape[1], k.shape[2]
    s = torch.matmul(_group(q, ykv), k.transpose(-1, -2))  # [X, Ykv, G·lq, lk], products in q's dtype
    s = s.float() if s.dtype != torch.float32 else s
    s = s.mul_(scale).view(x, ykv, y // ykv, lq, lk)
    if causal:
        s.masked_fill_(~top_left_causal(lq, lk).to(s.device), NEG_INF)
    if keep is not None:
        s.masked_fill_(~keep, NEG_INF)  # keep: broadcastable [.., 1, lq, lk]
    if add is not None:
        full = add.shape[1] == y  # else [X, 1, lq|1, lk] by head (G = 1)
        s.add_(add.view(add.shape[0], ykv, y // ykv, *add.shape[2:]) if full else add.unsqueeze(2))
    return s


def _mask_for_matmul(keep: Tensor | None, by_head: bool) -> Tensor | None:
    """``[n or 1, lq, lk]`` → broadcastable against ``[X, Ykv, G, lq, lk]``."""
    if keep is None:
        return None
    return keep[None, :, None] if by_head else keep[:, None, None]


def _matmul_piece(
    q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None, causal: bool, scale: float, add: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Reference tile computation in PyTorch: ``(out [X, Y, lq, D] in q's dtype, lse [X, Y, lq])``."""
    x, y, lq, d = q.shape
    s = _matmul_scores(q, k, keep, causal, scale, add)  # [X, Ykv, G, lq, lk] float32
    m = s.amax(dim=-1, keepdim=True)  # [.., lq, 1]
    m_safe = torch.nan_to_num(m, neginf=0.0)
    p = s.sub_(m_safe).exp_()
    total = p.sum(dim=-1, keepdim=True)  # [.., lq, 1]
    ykv = k.shape[1]
    pv = torch.matmul(p.view(x, ykv, -1, p.shape[-1]).to(v.dtype), v).float()  # [X, Ykv, G·lq, D]
    out = pv.view(*s.shape[:-1], d) / total.masked_fill(total == 0, 1.0)
    lse = (m_safe + total.log()).squeeze(-1)  # -inf where nothing is seen
    return out.reshape(x, y, lq, d).to(q.dtype), lse.reshape(x, y, lq)


def _matmul_piece_backward(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    keep: Tensor | None,
    causal: bool,
    scale: float,
    add: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The piece's share of ``dq, dk, dv`` (float32) from the global ``out`` and ``lse``."""
    x, y, lq, d = q.shape
    ykv = k.shape[1]
    g = y // ykv
    s = _matmul_scores(q, k, keep, causal, scale, add)  # [X, Ykv, G, lq, lk]
    p = s.sub_(lse.view(x, ykv, g, lq, 1)).exp_()  # global probabilities (0 where hidden)
    p3 = p.view(x, ykv, g * lq, -1)  # [X, Ykv, G·lq, lk]
    do3 = _group(dout, ykv)  # [X, Ykv, G·lq, D]
    dv = torch.matmul(p3.transpose(-1, -2).to(v.dtype), do3.to(v.dtype)).float()  # [X, Ykv, lk, D]
    dp = torch.matmul(do3.to(v.dtype), v.transpose(-1, -2)).float()  # [X, Ykv, G·lq, lk]
    delta = (dout.float() * out.float()).sum(dim=-1).view(x, ykv, g * lq, 1)  # rowsum(dO ∘ O)
    ds = p3.mul_(dp.sub_(delta)).mul_(scale)  # [X, Ykv, G·lq, lk]
    dq = torch.matmul(ds.to(k.dtype), k).float().view(x, y, lq, d)
    dk = torch.matmul(ds.transpose(-1, -2).to(q.dtype), _group(q, ykv)).float()  # [X, Ykv, lk, D]
    return dq, dk, dv


# -- forward and backward over a plan ----------------------------------------------------------------


def _merge(acc_out: Tensor, acc_lse: Tensor, out: Tensor, lse: Tensor) -> None:
    """Fold a piece's ``(out, lse)`` into the accumulators' views, in place (float32): the new
    piece's share of each row is ``e^{L_new} / (e^{L_acc} + e^{L_new}) = sigmoid(L_new - L_acc)``
    (0 where it sees nothing; NaN → 0 where neither does)."""
    weight = torch.sigmoid(lse - acc_lse).nan_to_num_(0.0)  # [.., lq]
    torch.logaddexp(acc_lse, lse, out=acc_lse)
    acc_out.lerp_(out.float() if out.dtype != acc_out.dtype else out, weight.unsqueeze(-1))


def forward_plan(
    q3: Tensor,
    k3: Tensor,
    v3: Tensor,
    plan: Plan,
    scale: float,
    backend: str,
    by_head: bool,
    need_lse: bool = True,
    alibi: TileBias | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``q3`` ``[BH, Nq, D]``, ``k3``/``v3`` ``[BHkv, Nk, D]`` (contiguous, computing dtype) →
    ``(out [BH, Nq, D], lse [BH, Nq] float32)``; ``out`` is float32 unless a single piece made it.
    Without ``need_lse`` (no backward pass) and without merges, no log-sum-exp is kept (None)."""
    bh, nq, d = q3.shape
    single = len(plan.pieces) == 1
    keep_lse = need_lse or "merge" in plan.modes
    out_acc: Tensor | None = None
    lse_acc: Tensor | None = None
    if plan.init or not plan.pieces:
        out_acc = fresh((bh, nq, d), torch.float32, q3.device).zero_()
        lse_acc = q3.new_full((bh, nq), NEG_INF, dtype=torch.float32)
    elif plan.modes[0] != "base":
        out_acc = fresh((bh, nq, d), torch.float32, q3.device)
        lse_acc = q3.new_empty(bh, nq, dtype=torch.float32) if keep_lse else None
    for index, (p, mode) in enumerate(zip(plan.pieces, plan.modes, strict=True)):
        lay = tiles_as_heads(p, by_head)
        qv, kv, vv = _rows_view(q3, p, lay), _keys_view(k3, p, lay), _keys_view(v3, p, lay, "v")
        bias = None if alibi is None else alibi.pieces[index]
        if backend == "fused":
            add = _per_tile(p.bias(q3.dtype), lay) if bias is None else bias.mask
            out, lse = _fused_piece(qv, kv, vv, add, p.causal, scale)
        elif bias is None:
            out, lse = _matmul_piece(qv, kv, vv, _mask_for_matmul(p.keep, lay), p.causal, scale)
        else:
            out, lse = _matmul_piece(qv, kv, vv, None, p.causal, scale, bias.mask)
        if bias is not None and bias.shift is not None and keep_lse:
            lse = lse - bias.shift  # the kernel's log-sum-exp had each row's ALiBi constant taken out
        if p.empty is not None and keep_lse:
            lse = lse.masked_fill(_per_tile(p.empty, lay), NEG_INF)  # type: ignore[arg-type]
        if mode == "base":
            out_acc = _as_rows(out if single else out.float(), lay, bh, nq)
            lse_acc = _as_rows(lse, lay, bh, nq) if keep_lse else None
        elif mode == "assign":
            assert out_acc is not None
            _rows_view(out_acc, p, lay).copy_(out)
            if lse_acc is not None:
                _rows_view(lse_acc, p, lay).copy_(lse)
        else:
            assert out_acc is not None and lse_acc is not None
            _merge(_rows_view(out_acc, p, lay), _rows_view(lse_acc, p, lay), out, lse)
    assert out_acc is not None
    return out_acc, lse_acc


def _as_rows(x: Tensor, by_head: bool, bh: int, nq: int) -> Tensor:
    """A base piece's ``[BH, n, lq(, D)]`` or ``[n, BH, lq(, D)]`` result as ``[BH, Nq(, D)]``
    (a copy only for the tile-major layout)."""
    if not by_head:
        x = x.transpose(0, 1)  # [BH, n, lq(, D)]
    return x.reshape(bh, nq, *x.shape[3:]).contiguous()


def backward_plan(
    dout3: Tensor,
    q3: Tensor,
    k3: Tensor,
    v3: Tensor,
    out3: Tensor,
    lse3: Tensor,
    plan: Plan,
    scale: float,
    backend: str,
    by_head: bool,
    alibi: TileBias | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``dq, dk, dv`` (float32, ``[BH, Nq, D]``, ``[BHkv, Nk, D]`` ×2) of :func:`forward_plan`;
    ``out3`` and ``dout3`` in the computing dtype, ``lse3`` with 0 for rows that see nothing."""
    dq = torch.zeros(q3.shape, dtype=torch.float32, device=q3.device)
    dk = torch.zeros(k3.shape, dtype=torch.float32, device=k3.device)
    dv = torch.zeros(v3.shape, dtype=torch.float32, device=v3.device)
    for index, p in enumerate(plan.pieces):
        lay = tiles_as_heads(p, by_head)
        qv, kv, vv = _rows_view(q3, p, lay), _keys_view(k3, p, lay), _keys_view(v3, p, lay, "v")
        ov, lv, dov = _rows_view(out3, p, lay), _rows_view(lse3, p, lay), _rows_view(dout3, p, lay)
        bias: PieceBias | None = None if alibi is None else alibi.pieces[index]
        if bias is not None and bias.shift is not None:
            lv = lv + bias.shift  # the log-sum-exp as the kernel knew it (ALiBi's row constants out)
        if backend == "fused":
            add = _per_tile(p.bias(q3.dtype), lay) if bias is None else bias.mask
            gq, gk, gv = _fused_backward(dov, qv, kv, vv, ov, lv, 0.0, p.causal, attn_mask=add, scale=scale)
        elif bias is None:
            keep = _mask_for_matmul(p.keep, lay)
            gq, gk, gv = _matmul_piece_backward(dov, qv, kv, vv, ov, lv, keep, p.causal, scale)
        else:
            gq, gk, gv = _matmul_piece_backward(dov, qv, kv, vv, ov, lv, None, p.causal, scale, bias.mask)
        _rows_view(dq, p, lay).add_(gq)
        _add_keys(dk, gk, p, lay)
        _add_keys(dv, gv, p, lay)
    return dq, dk, dv


def _add_keys(acc: Tensor, grad: Tensor, p: Piece, by_head: bool) -> None:
    """Add a piece's key gradients ``[BHkv, n, lk, D]`` (or ``[n, BHkv, lk, D]``) to ``acc``
    ``[BHkv, Nk, D]``, where tiles may share keys."""
    g = grad if by_head else grad.transpose(0, 1)  # [BHkv, n, lk, D]
    if p.keys is None and (p.n == 1 or p.k_step >= p.lk):
        view = acc.as_strided(
            g.shape, (acc.shape[1] * acc.shape[2], p.k_step * acc.shape[2], acc.shape[2], 1), p.k0 * acc.shape[2]
        )
        view.add_(g)  # tiles do not overlap
        return
    if p.keys is None and p.k_step == 0:
        acc[:, p.k0 : p.k0 + p.lk].add_(g.sum(dim=1))
        return
    index = p.key_index().to(acc.device).flatten()  # [n·lk]
    acc.index_add_(1, index, g.reshape(g.shape[0], -1, g.shape[-1]).float())


class TileAttention(torch.autograd.Function):
    """Attention over a :class:`Plan`, with a backward pass that recomputes piece by piece."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        plan: Plan,
        scale: float,
        backend: str,
        work: torch.dtype,
        sink: Tensor | None = None,
        alibi: TileBias | None = None,
    ) -> Tensor:
        b, h, nq, d = q.shape
        hkv, nk = k.shape[1], k.shape[2]
        by_head = h == hkv
        q3 = q.to(work).reshape(b * h, nq, d).contiguous()  # [BH, Nq, D]
        k3 = k.to(work).reshape(b * hkv, nk, d).contiguous()  # [BHkv, Nk, D]
        v3 = v.to(work).reshape(b * hkv, nk, d).contiguous()
        grad = any(ctx.needs_input_grad[:3])
        if alibi is None or b == 1:
            out3, lse3 = forward_plan(q3, k3, v3, plan, scale, backend, by_head, grad or sink is not None, alibi)
        else:  # ALiBi's masks have the query heads: one batch element per pass
            parts = [
                forward_plan(q3[i * h : (i + 1) * h], k3[i * hkv : (i + 1) * hkv], v3[i * hkv : (i + 1) * hkv],
                             plan, scale, backend, by_head, grad or sink is not None, alibi)
                for i in range(b)
            ]  # fmt: skip
            out3 = torch.cat([o for o, _ in parts])  # [BH, Nq, D]
            lse3 = None if parts[0][1] is None else torch.cat([lse for _, lse in parts])  # type: ignore[misc]
        if sink is not None:  # [BH, Nq, D], [BH, Nq] with each head's sink joined to its rows' sums
            assert lse3 is not None
            out3, lse3 = with_sink(out3, lse3, sink.to(lse3.device).repeat(b)[:, None])
        out = out3.to(q.dtype).view(b, h, nq, d)
        if grad:
            assert lse3 is not None
            ctx.save_for_backward(q3, k3, v3, out3.to(work), lse3.masked_fill(lse3 == NEG_INF, 0.0))
            ctx.meta = (plan, scale, backend, by_head, q.shape, k.shape, q.dtype, k.dtype, v.dtype, alibi)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        q3, k3, v3, out3, lse3 = ctx.saved_tensors
        plan, scale, backend, by_head, q_shape, k_shape, q_dtype, k_dtype, v_dtype, alibi = ctx.meta
        dout3 = grad.to(q3.dtype).reshape(q3.shape).contiguous()  # [BH, Nq, D]
        b = q_shape[0]
        if alibi is None or b == 1:
            dq, dk, dv = backward_plan(dout3, q3, k3, v3, out3, lse3, plan, scale, backend, by_head, alibi)
        else:  # one batch element per pass, as forward
            h, hkv = q_shape[1], k_shape[1]
            parts = [
                backward_plan(dout3[r], q3[r], k3[c], v3[c], out3[r], lse3[r], plan, scale, backend, by_head, alibi)
                for r, c in ((slice(i * h, (i + 1) * h), slice(i * hkv, (i + 1) * hkv)) for i in range(b))
            ]
            dq, dk, dv = (torch.cat([part[i] for part in parts]) for i in range(3))
        return (dq.to(q_dtype).view(q_shape), dk.to(k_dtype).view(k_shape), dv.to(v_dtype).view(k_shape)) + (None,) * 6


def with_sink(out: Tensor, lse: Tensor, sink: Tensor) -> tuple[Tensor, Tensor]:
    """Join a sink logit ``[BH, 1]`` to every row's softmax: ``lse' = log(e^lse + e^σ)`` and
    ``out' = out · e^(lse − lse')`` (the sink takes its share and carries no value). The backward
    needs nothing else: it recomputes ``P = exp(S − lse')``, the probabilities with the sink, and
    ``rowsum(dO ⊙ out')``, exactly the gradient of attention with a sink."""
    joined = torch.logaddexp(lse, sink)  # [BH, Nq]
    return out * torch.exp(lse - joined).unsqueeze(-1).to(out.dtype), joined


def attention(
    q: Tensor, k: Tensor, v: Tensor, plan: Plan, scale: float, backend: str, work: torch.dtype,
    sink: Tensor | None = None, alibi: TileBias | None = None,
) -> Tensor:  # fmt: skip
    """``q`` ``[B, H, Nq, D]``, ``k``/``v`` ``[B, Hkv, Nk, D]`` → ``[B, H, Nq, D]`` over ``plan``,
    differentiable through :class:`TileAttention`; ``sink`` ``[H]``: each head's sink logit;
    ``alibi``: the plan's ALiBi masks (:class:`~attnbench.implementations._tile_bias.TileBias`)."""
    out = TileAttention.apply(q, k, v, plan, scale, backend, work, sink, alibi)
    return out  # type: ignore[no-any-return]
