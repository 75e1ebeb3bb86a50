"""A decode step's partials: attention of a few grouped query rows over chunks of cached keys,
each chunk normalised on its own with its log-sum-exp, and their combination (split-KV decoding,
:mod:`~attnbench.implementations.split_kv`).

A chunk's partial is computed by one of two kinds of path. *Fused*: PyTorch's CPU flash kernel,
the chunks its batch. *Products*: the chunks as one stretch, ``K·qᵀ`` and ``P·V`` around an
in-place float32 softmax, batched over the KV heads or one head at a time. Which is fastest
depends on the machine, the dtype and the stretch, so the caller times them (:func:`fastest`).

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

Tensor = torch.Tensor
#: Rounds of a path trial, after one warm-up call of each path (the median kept).
TRIAL_ROUNDS = 2
#: Scores further than this below their row's largest are raised to it before ``exp`` (products path).
EXP_FLOOR = -80.0


def low_precision_matmul_is_fast() -> bool:
    """Whether this CPU multiplies bfloat16 natively (else float32 is the faster way)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


Partial = tuple[Tensor, Tensor]  # (normalised output [Hkv, n, R, D], log-sum-exp [Hkv, n, R]), float32


def attend_chunks(
    qg: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | None, upcast: bool, path: str = "batched"
) -> Partial:
    """Partial attention of ``qg`` ``[Hkv, R, D]`` over ``n`` chunks ``k``, ``v`` ``[Hkv, n, C, D]``,
    each chunk normalised on its own, with its log-sum-exp. ``bias`` ``[n, 1 or Hkv, R, C]`` float32
    is added to the scores (``−inf`` where a pair is masked; ALiBi's bias); ``upcast`` multiplies a
    low-precision cache in float32 (where that is faster than its own dtype). ``path``: ``fused``,
    PyTorch's CPU flash kernel on each chunk (it returns the log-sum-exp; one head size only);
    else :func:`_products`, the chunks as one partial."""
    if path == "fused":
        return _fused_cpu(qg, k, v, scale, bias)
    return _products(qg, k, v, scale, bias, upcast, per_head=path == "per_head")


def _products(
    qg: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | None, upcast: bool, per_head: bool
) -> Partial:
    """The ``n`` chunks as one stretch of ``L = n·C`` keys: scores ``K·qᵀ``, an in-place softmax
    in float32, then ``P·V``; the products batched over the KV heads or one head at a time.
    Returns one partial, ``[Hkv, 1, R, Dv]`` and ``[Hkv, 1, R]``. A score more than
    :data:`EXP_FLOOR` below its row's largest is raised to it (a masked one too): its weight, under
    ``e⁻⁸⁰`` of the largest's, is nothing in any dtype, and PyTorch's vectorised ``exp`` leaves
    its fast path below about −87 and at −inf (6–15× slower where many scores lie there). A row
    that sees no key (its largest score −inf) gets a total of 0: NaN and ``−inf``."""
    hkv, n, c, d = k.shape
    keys, values = k.reshape(hkv, n * c, d), v.reshape(hkv, n * c, v.shape[-1])  # [Hkv, L, D], [Hkv, L, Dv] (views)
    if upcast:
        qg, keys, values = qg.float(), keys.float(), values.float()
    if per_head:
        scores = qg.new_empty(hkv, n * c, qg.shape[1])  # [Hkv, L, R]
        for h in range(hkv):
            torch.mm(keys[h], qg[h].T, out=scores[h])
    else:
        scores = torch.matmul(keys, qg.transpose(1, 2))  # [Hkv, L, R]
    s = torch.empty(hkv, qg.shape[1], n * c, device=qg.device).copy_(scores.transpose(1, 2)).mul_(scale)  # [Hkv, R, L]
    if bias is not None:  # [n, 1 or Hkv, R, C] -> [1 or Hkv, R, L]
        s.add_(bias.permute(1, 2, 0, 3).reshape(bias.shape[1], bias.shape[2], n * c))
    top = s.amax(dim=-1, keepdim=True)  # [Hkv, R, 1]; −inf where a row sees nothing
    blind = top.isneginf()
    top.masked_fill_(blind, 0.0)
    p = s.sub_(top).clamp_(min=EXP_FLOOR).exp_()  # [Hkv, R, L], at most 1
    total = p.sum(dim=-1, keepdim=True).masked_fill_(blind, 0.0)  # [Hkv, R, 1]
    p_low = p.to(values.dtype)
    if per_head:
        o = qg.new_empty(hkv, qg.shape[1], values.shape[-1], dtype=values.dtype)  # [Hkv, R, Dv]
        for h in range(hkv):
            torch.mm(p_low[h], values[h], out=o[h])
    else:
        o = torch.matmul(p_low, values)  # [Hkv, R, Dv]
    out = o.float().div_(total)  # NaN where a row sees nothing
    return out[:, None], (top + total.log()).squeeze(-1)[:, None]  # [Hkv, 1, R, Dv], lse [Hkv, 1, R]


def _fused_cpu(qg: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | None) -> Partial:
    """The chunks as the batch of one call of PyTorch's CPU flash kernel: ``Hkv · n`` tasks,
    each reading its chunk of keys once for all ``R`` grouped query rows."""
    n = k.shape[1]
    qc = qg[None].expand(n, *qg.shape)  # [n, Hkv, R, D] (no copy)
    kc, vc = k.transpose(0, 1), v.transpose(0, 1)  # [n, Hkv, C, D] (views)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        qc, kc, vc, 0.0, False, attn_mask=bias, scale=scale
    )  # [n, Hkv, R, D], [n, Hkv, R]
    return out.transpose(0, 1).float().nan_to_num_(0.0), lse.transpose(0, 1).float()


def combine(parts: list[Partial]) -> Tensor:
    """Merge chunk partials into ``[Hkv, R, D]``: weights ``exp(lse_c − logsumexp_c lse_c)``."""
    o = torch.cat([p[0] for p in parts], dim=1)  # [Hkv, N, R, D]
    lse = torch.cat([p[1] for p in parts], dim=1)  # [Hkv, N, R]
    w = torch.softmax(lse, dim=1).nan_to_num_(0.0)  # [Hkv, N, R]; a chunk that saw nothing weighs 0
    return (o.nan_to_num_(0.0) * w[..., None]).sum(dim=1)  # [Hkv, R, D]


def fastest(paths: list[str], run: Callable[[str], object]) -> str:
    """The path whose call takes least time on this machine: each called once to warm up, then
    :data:`TRIAL_ROUNDS` times in alternation, the median kept (the first on a tie or alone).
    Only CPU paths are ever timed (a single candidate is returned untimed)."""
    if len(paths) == 1:
        return paths[0]
    seconds: dict[str, list[float]] = {path: [] for path in paths}
    for round_ in range(TRIAL_ROUNDS + 1):
        for path in paths:
            start = time.perf_counter()
            run(path)
            if round_:  # round 0 warms up
                seconds[path].append(time.perf_counter() - start)
    return min(paths, key=lambda path: statistics.median(seconds[path]))
