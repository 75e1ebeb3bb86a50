"""Why PyTorch's CPU flash kernel misses FlashAttention's bound on long low-precision gradients.

``python benchmarks/sdpa_backward_rounding.py`` runs SDPA's forward and backward (its CPU flash
kernel) on one head of causal attention, the output gradient random on every row, and compares
the value gradient ``dv`` with three others against the float64 reference:

- ``plain``: FlashAttention's plain computation in the same dtype, ``P`` rounded to the dtype and
  ``dv = Pᵀ·dO`` accumulated in float32 in one product, rounded once;
- ``rounded per block``: the same products, but the sum kept in the dtype and rounded after each
  block of :data:`Q_BLOCK` query rows, which is how the kernel accumulates: its ``dq``, ``dk`` and
  ``dv`` buffers are of the inputs' dtype and each block's product is added into them
  (``beta = 1``), so a key's gradient is rounded ``N / 256`` times instead of once;
- SDPA itself.

If SDPA's error is the per-block rounding's (they differ by a unit in the last place or so) and
both are many times the plain one, the criterion's flag on SDPA's backward is a finding about that
kernel's accumulators, not a criterion that is too strict.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

Tensor = torch.Tensor
#: Query rows a block of PyTorch's CPU flash backward handles (its ``q_split_size`` for N ≥ 768).
Q_BLOCK = 256


def value_gradients(seq_len: int, head_dim: int, dtype: torch.dtype, seed: int) -> dict[str, Tensor]:
    """``dv`` ``[1, 1, N, D]`` float64 from the reference, SDPA's flash kernel, the plain
    computation and the per-block rounded sum, for causal attention on seeded inputs."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v, grad = (torch.randn(1, 1, seq_len, head_dim, generator=gen).to(dtype) for _ in range(4))  # [1, 1, N, D]
    scale = head_dim**-0.5
    s = (q.double() @ k.double().transpose(-1, -2)) * scale  # [1, 1, N, N]
    hidden = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)
    p = torch.softmax(s.masked_fill(hidden, float("-inf")), dim=-1)  # [1, 1, N, N] float64
    reference = p.transpose(-1, -2) @ grad.double()  # [1, 1, N, D]
    leaf = v.clone().requires_grad_()
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        F.scaled_dot_product_attention(q, k, leaf, is_causal=True).backward(grad)
    assert leaf.grad is not None
    p_low = p.to(dtype).float()  # [1, 1, N, N]: the probabilities as the kernel rounds them
    plain = (p_low.transpose(-1, -2) @ grad.float()).to(dtype)  # one product, rounded once
    blocked = torch.zeros_like(v)  # [1, 1, N, D] in the dtype, as the kernel's buffer
    for m in range(0, seq_len, Q_BLOCK):
        rows = slice(m, m + Q_BLOCK)
        blocked = (blocked.float() + p_low[..., rows, :].transpose(-1, -2) @ grad[..., rows, :].float()).to(dtype)
    return {"reference": reference, "sdpa": leaf.grad.double(), "plain": plain.double(), "blocked": blocked.double()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=16384)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"causal, N = {args.seq_len}, D = {args.head_dim}; max|dv - ref| (float64 reference)")
    for name in args.dtypes:
        dtype = getattr(torch, name)
        for seed in range(args.seeds):
            dv = value_gradients(args.seq_len, args.head_dim, dtype, seed)
            err = {key: float((dv[key] - dv["reference"]).abs().max()) for key in ("sdpa", "plain", "blocked")}
            apart = float((dv["sdpa"] - dv["blocked"]).abs().max())
            ulp = float(torch.finfo(dtype).eps) * float(dv["reference"].abs().max())
            print(
                f"{name} seed {seed}: sdpa {err['sdpa']:.3g}, plain {err['plain']:.3g}, "
                f"rounded per block {err['blocked']:.3g}; sdpa / plain = {err['sdpa'] / err['plain']:.2f}; "
                f"sdpa vs rounded per block {apart:.3g} ({apart / ulp:.2f} ulp of max|dv|)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
