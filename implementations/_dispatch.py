"""Which dtype and which back end the tiles of :mod:`~attnbench.implementations._tiles` compute in.

Low precision
-------------
bfloat16/float16 inputs are computed in their own dtype (matrix products with float32
accumulation, as fused kernels do) where the machine has matrix units for them
(``torch.ops.mkldnn._is_mkldnn_bf16_supported()``; always on CUDA), and otherwise converted once
to float32, because there a bfloat16 matrix product is ~100× slower than a float32 one. Pieces
are always merged in float32, and gradients summed over pieces in float32.
It registers no implementation of its own.

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def low_precision_units(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether ``device`` has matrix units for ``dtype`` (bf16/fp16 products at full speed)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return True
    if kind != "cpu":
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return False


def compute_dtype(dtype: torch.dtype, device: torch.device | str, low_precision: bool | None) -> torch.dtype:
    """The dtype tiles are computed in: ``dtype`` itself for float32/float64, and for
    bfloat16/float16 their own dtype when ``low_precision`` (None: when the device has matrix
    units for it, see :func:`low_precision_units`), else float32."""
    if dtype not in (torch.bfloat16, torch.float16):
        return dtype
    use = low_precision_units(dtype, device) if low_precision is None else low_precision
    return dtype if use else torch.float32


def under_autograd(work: torch.dtype, low_precision: bool | None, *inputs: Tensor) -> torch.dtype:
    """The dtype of one call: ``work``, except that a call autograd will differentiate computes
    its tiles in float32 unless low precision was asked for by name. Autograd through the
    low-precision tiles rounds ``dP`` and ``dS`` to bfloat16/float16 at every step: within
    FlashAttention's bound (the plain bfloat16 computation's error twice), yet ten times and more
    the error of float32 tiles (``test_low_precision_backward_is_opt_in``), so it is never chosen
    by capability alone."""
    low = work in (torch.bfloat16, torch.float16)
    if low and low_precision is None and torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return torch.float32
    return work


def pick_backend(device: torch.device | str, backend: str | None) -> str:
    """``"fused"`` on the CPU, ``"matmul"`` elsewhere, unless ``backend`` names one."""
    if backend is not None:
        if backend not in ("fused", "matmul"):
            raise ValueError(f"unknown tile back end {backend!r}; expected 'fused' or 'matmul'")
        if backend == "fused" and torch.device(device).type != "cpu":
            raise ValueError("the fused back end is PyTorch's CPU kernel: it runs on the CPU only")
        return backend
    return "fused" if torch.device(device).type == "cpu" else "matmul"
