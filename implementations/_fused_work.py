"""The work PyTorch's fused CPU FlashAttention kernel does, for ``torch.utils.flop_counter``.

PyTorch's FLOP counter has no formula for ``aten._scaled_dot_product_flash_attention_for_cpu``
(the kernel behind SDPA on the CPU, and behind our tiles: :mod:`~attnbench.implementations._tiles`).
The kernel walks ``qSplit`` query rows at a time (256 from 768 query rows, 64 from 192, else 32)
over blocks of 512 keys, and under ``is_causal`` stops after the block that holds the top-left
causal boundary: :func:`fused_pairs` counts the (query, key) pairs it computes, masked or not.

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

from typing import Any

import torch

#: CPU FlashAttention kernel: keys per block (torch ≥ 2.2).
KV_SPLIT = 512


def _q_split(lq: int) -> int:
    return 256 if lq >= 768 else 64 if lq >= 192 else 32


def fused_pairs(lq: int, lk: int, causal: bool) -> int:
    """Pairs the CPU kernel computes for one (batch, head): it walks ``qSplit`` query rows at a
    time over key blocks of 512, stopping after the block that holds the causal boundary."""
    split = _q_split(lq)
    total = 0
    for m in range(0, lq, split):
        rows = min(split, lq - m)
        keys = min(m + rows, lk) if causal else lk
        total += rows * sum(min(KV_SPLIT, lk - n) for n in range(0, keys, KV_SPLIT))
    return total


def fused_flops(
    query: Any, key: Any, value: Any, dropout_p: float = 0.0, is_causal: bool = False, *args: Any, **kwargs: Any
) -> int:
    """FLOPs of one fused forward call (``QKᵀ`` and ``PV``: ``4·D`` per computed pair); the
    counter passes shapes in place of tensors."""
    b, h, lq, d = query
    return 4 * d * b * h * fused_pairs(lq, key[2], is_causal)


def fused_backward_flops(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    """FLOPs of one fused backward call: ``QKᵀ`` again, ``dV``, ``dP``, ``dQ``, ``dK``."""
    causal = bool(args[3]) if len(args) > 3 else bool(kwargs.get("is_causal", False))  # out, lse, dropout, causal
    b, h, lq, d = query
    return 10 * d * b * h * fused_pairs(lq, key[2], causal)


#: ``custom_mapping`` for ``torch.utils.flop_counter.FlopCounterMode``: the fused kernels' work
#: (PyTorch's counter has no formula for its CPU FlashAttention kernel).
FLOP_FORMULAS: dict[Any, Any] = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: fused_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: fused_backward_flops,
}
