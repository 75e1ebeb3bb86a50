"""PyTorch's ``scaled_dot_product_attention`` (SDPA): the default choice and each backend alone.

SDPA is one call with several kernels behind it. ``sdpa`` lets PyTorch choose (on the CPU it
picks its flash kernel; on CUDA cuDNN, FlashAttention-2, memory-efficient or math, in its
priority order). Each other variant pins one backend with ``torch.nn.attention.sdpa_kernel``:

* ``sdpa_math`` — the plain composite: materializes the ``[Nq, Nk]`` scores (CPU and CUDA);
* ``sdpa_flash`` — ``SDPBackend.FLASH_ATTENTION``: on the CPU PyTorch's own blocked flash kernel
  (which takes a boolean mask), on CUDA FlashAttention-2 (no mask: causal and full only);
* ``sdpa_efficient`` — the memory-efficient (xformers-derived) CUDA kernel, masks allowed;
* ``sdpa_cudnn`` — cuDNN's fused attention on CUDA.

Patterns: full attention passes no mask; causal with ``Nq == Nk`` passes ``is_causal=True``;
bottom-right causal with ``Nq < Nk`` passes ``causal_lower_right`` off the CPU (no dense mask;
on the CPU no kernel takes it, and it would build the dense mask inside every call); every other
pattern (``Nq > Nk`` causal, where some queries see no key, window, block layout, packed
documents) passes the pattern's dense boolean mask, built once in :meth:`prepare`, never inside the timed call.
Grouped-query attention uses ``enable_gqa=True``. ALiBi (``bias = "alibi"``) has no SDPA
argument: it is passed as an additive float mask ``[1, H, Nq, Nk]`` holding the bias and the
pattern, as SDPA's users pass it, and costs its memory. Soft-capping and sinks have no SDPA form
(its kernels take no score hook and return no log-sum-exp): unsupported.

What a backend accepts depends on the device, dtype, head dim, mask and gradients, so
availability and per-case support are decided by a tiny probe call of the same kind, cached;
the error PyTorch raises (and the warnings it gives about rejected kernels) is the reason.
Entering ``sdpa_kernel`` costs about 10 µs per call on the CPU, counted in the pinned variants.

Decoding (``prepare_decode``): SDPA reads a dense ``[B, Hkv, L, D]`` cache with a boolean mask
for each sequence's valid tokens and ``enable_gqa=True`` (K and V are never repeated); a paged
cache is gathered into that form inside the step.

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar, TypeAlias

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnbench import Availability, Growth, Implementation, Problem, register
from attnbench.case.kvcache import KVCache
from attnbench.case.variants import alibi_bias, alibi_decode
from attnbench.plugins.contract import ALL_FEATURES, AttentionFn

Tensor = torch.Tensor
if TYPE_CHECKING:  # torch.nn.attention.bias imports torch._dynamo: 2 s at every worker's start
    from torch.nn.attention.bias import CausalBias

Mask: TypeAlias = "Tensor | CausalBias | None"
ALL_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16", "float64")


def pattern_arguments(problem: Problem, device: str | torch.device) -> tuple[Mask, bool]:
    """``(attn_mask, is_causal)`` giving SDPA the problem's pattern with the least mask."""
    pattern, nq, nk = problem.pattern, problem.seq_len, problem.kv_len
    if problem.bias == "alibi":
        return alibi_mask(problem, device), False
    if pattern.is_full:
        return None, False
    if pattern.window == 0 and pattern.layout is None and not pattern.documents and not pattern.first:  # causal
        if nq == nk:
            return None, True
        if nq < nk and torch.device(device).type != "cpu":  # every query sees a key: no empty rows
            # On the CPU no kernel takes the lower-right variant: CausalBias builds the dense mask
            # inside every call (5% of a 1K x 4K call), and importing it costs 2 s (torch._dynamo);
            # the mask built once below is the same function.
            from torch.nn.attention.bias import causal_lower_right

            return causal_lower_right(nq, nk), False
    return pattern.mask(nq, nk, device=device), False  # [Nq, Nk] bool


def alibi_mask(problem: Problem, device: str | torch.device) -> Tensor:
    """``[1, H, Nq, Nk]``: ALiBi's ``−slope_h·|p − j|`` as SDPA's additive float mask, ``−inf``
    where the pattern hides a pair, in float32 (the bias of FlashAttention's reference; a
    low-precision mask would round a bias of thousands to tens), or the query dtype where the
    kernel takes no other."""
    nq, nk = problem.seq_len, problem.kv_len
    bias = alibi_bias(problem.heads, nq, nk)  # [H, Nq, Nk]
    if not problem.pattern.is_full:
        bias = bias.masked_fill(~problem.pattern.mask(nq, nk), float("-inf"))
    dtype = torch.float32 if torch.device(device).type == "cpu" else problem.torch_dtype
    return bias[None].to(device, dtype)


def _call(q: Tensor, k: Tensor, v: Tensor, mask: Mask, is_causal: bool, scale: float, gqa: bool) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=gqa)


def _probe(backend: SDPBackend | None, problem: Problem) -> str | None:
    """Run ``problem``'s kind of call at a tiny size; ``None``, or the error it raised.

    The tiny case keeps what decides whether a kernel accepts a call: device, dtype, head dim,
    grouped heads, gradients, the pattern, and whether ``Nq`` is below, equal to or above ``Nk``
    (which picks ``is_causal``, ``causal_lower_right`` or a dense mask)."""
    nq = min(problem.seq_len, 8)
    nk = nq + 1 if problem.seq_len < problem.kv_len else nq - 1 if problem.seq_len > problem.kv_len else nq
    tiny = problem.with_(batch=1, heads=2 if problem.gqa else 1, kv_heads=1, seq_len=nq, kv_len=nk)
    return _probe_tiny(backend, tiny)


@lru_cache(maxsize=256)
def _probe_tiny(backend: SDPBackend | None, tiny: Problem) -> str | None:
    try:
        q, k, v = (t.requires_grad_(tiny.needs_grad) for t in tiny.make_inputs())  # [1, h, n, D]
        mask, is_causal = pattern_arguments(tiny, tiny.device)
    except Exception as exc:  # the device itself is missing, for example
        return f"{type(exc).__name__}: {exc}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with _selected(backend):
                out = _call(q, k, v, mask, is_causal, tiny.scale, tiny.gqa)  # [1, h, nq, D]
                if tiny.needs_grad:
                    out.sum().backward()
        except Exception as exc:
            why = "; ".join(dict.fromkeys(str(w.message).strip() for w in caught))
            return f"{type(exc).__name__}: {exc}" + (f" (warnings: {why})" if why else "")
    return None


def _selected(backend: SDPBackend | None) -> AbstractContextManager[object]:
    """``sdpa_kernel(backend)``, or no change (PyTorch's own choice) for None."""
    return nullcontext() if backend is None else sdpa_kernel(backend)


def _devices_here() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class _SDPA(Implementation):
    """SDPA with one backend pinned (``backend``), or PyTorch's choice (None)."""

    backend: ClassVar[SDPBackend | None] = None
    exact = True
    library = "PyTorch"
    computes = ("full", "causal", "window", "block-sparse")
    dtypes = ALL_DTYPES
    features = ALL_FEATURES - {"softcap", "sinks"}  # no score hook, no log-sum-exp returned
    growth = Growth(2.0, 1.0)

    def _probe_dtype(self, device: str) -> str:
        return "float16" if device == "cuda" else "float32"

    def available(self) -> Availability:
        reasons = []
        for device in self.devices:
            if device not in _devices_here():
                reasons.append(f"no {device} device here (torch.cuda.is_available() is False)")
                continue
            error = _probe(self.backend, Problem(1, 1, 8, 32, dtype=self._probe_dtype(device), device=device))
            if error is None:
                return Availability.yes()
            reasons.append(f"on {device}: {error}")
        if "cpu" not in self.devices:  # say what a CUDA-only backend does on the CPU
            error = _probe(self.backend, Problem(1, 1, 8, 32))
            if error is not None:
                reasons.append(f"on cpu under sdpa_kernel({self.backend}): {error}")
        where = " and ".join(self.devices)
        return Availability.no(f"{self.name} runs on {where} only; " + "; ".join(reasons))

    def supports(self, problem: Problem) -> str | None:
        reason = super().supports(problem)
        if reason is not None:
            return reason
        error = _probe(self.backend, problem)
        return None if error is None else f"{self.name} cannot run this case: {error}"

    def prepare(self, problem: Problem) -> AttentionFn:
        mask, is_causal = pattern_arguments(problem, problem.device)  # [Nq, Nk] bool, or none
        scale, gqa, backend = problem.scale, problem.gqa, self.backend
        if backend is None:

            def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
                return _call(q, k, v, mask, is_causal, scale, gqa)  # [B, H, Nq, D]

            return run

        def run_pinned(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            with sdpa_kernel(backend):
                return _call(q, k, v, mask, is_causal, scale, gqa)  # [B, H, Nq, D]

        return run_pinned

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return self.prepare(problem)(q, k, v)

    def prepare_decode(self, problem: Problem, cache: KVCache) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """A decode step: the cache up to the longest sequence, a mask for each sequence's valid
        tokens (and causal among the new ones); a paged cache is first gathered into that dense
        form, inside the step — SDPA cannot read pages, so that copy is part of its cost."""
        keys, mask = decode_keys(problem, cache)
        if problem.bias == "alibi":  # ALiBi from each sequence's own positions, as a float mask
            mask = decode_alibi_mask(problem, cache, mask)
        scale, gqa, backend = problem.scale, problem.gqa, self.backend

        def step(q: Tensor, k_new: Tensor, v_new: Tensor) -> Tensor:
            cache.append(k_new, v_new)
            k, v = keys()  # [B, Hkv, Lmax, D]
            with _selected(backend):
                return _call(q, k, v, mask, False, scale, gqa)  # [B, H, S, D]

        return step


def decode_alibi_mask(problem: Problem, cache: KVCache, keep: Tensor | None) -> Tensor:
    """``[B, H, S, Lmax]`` float32: ALiBi's ``−slope_h·|p − j|`` for each sequence's new tokens at
    the end of its own attended tokens, ``−inf`` where ``keep`` ``[B, 1, S, Lmax]`` hides a pair
    (float32 for the reason :func:`alibi_mask` gives; the query dtype off the CPU)."""
    longest = int(cache.attended.max())
    bias = alibi_decode(problem.heads, cache.attended.cpu(), problem.seq_len, longest)  # [B, H, S, Lmax]
    if keep is not None:
        bias = bias.masked_fill(~keep.cpu(), float("-inf"))
    dtype = torch.float32 if torch.device(problem.device).type == "cpu" else problem.torch_dtype
    return bias.to(problem.device, dtype)


def decode_keys(problem: Problem, cache: KVCache) -> tuple[Callable[[], tuple[Tensor, Tensor]], Tensor | None]:
    """``(keys, mask)`` for a decode step: ``keys()`` returns the cache's keys and values up to the
    longest sequence as ``[B, Hkv, Lmax, D]`` (views of a contiguous cache, a gathered copy of a
    paged one), and ``mask`` ``[B, 1, S, Lmax]`` keeps each sequence's valid pairs (None when every
    pair is valid)."""
    longest = int(cache.attended.max())
    mask = cache.mask(problem.pattern, longest)  # [B, 1, S, Lmax]
    needed = None if bool(mask.all()) else mask
    if not cache.paged:
        return (lambda: (cache.k[:, :, :longest], cache.v[:, :, :longest])), needed
    index, _ = cache.padded_index()  # [B, Lmax] token-axis index (padding masked)

    def gathered() -> tuple[Tensor, Tensor]:
        k = cache.k[0][:, index].transpose(0, 1)  # [Hkv, B, Lmax, D] -> [B, Hkv, Lmax, D]
        v = cache.v[0][:, index].transpose(0, 1)
        return k, v

    return gathered, needed


@register("sdpa")
class SDPA(_SDPA):
    description = "torch scaled_dot_product_attention, PyTorch's own backend choice; patterns as masks"


@register("sdpa_math")
class SDPAMath(_SDPA):
    description = "SDPA math backend (SDPBackend.MATH): scores materialized, CPU and CUDA"
    backend = SDPBackend.MATH
    growth = Growth(2.0, 2.0)


@register("sdpa_flash")
class SDPAFlash(_SDPA):
    description = (
        "SDPA flash backend (SDPBackend.FLASH_ATTENTION): PyTorch's flash kernel on CPU (takes masks),"
        " FlashAttention-2 on CUDA (causal/full only)"
    )
    backend = SDPBackend.FLASH_ATTENTION


@register("sdpa_efficient")
class SDPAEfficient(_SDPA):
    description = "SDPA memory-efficient backend (SDPBackend.EFFICIENT_ATTENTION), CUDA only"
    backend = SDPBackend.EFFICIENT_ATTENTION
    devices = ("cuda",)
    dtypes = ("float32", "bfloat16", "float16")


@register("sdpa_cudnn")
class SDPACudnn(_SDPA):
    description = "SDPA cuDNN backend (SDPBackend.CUDNN_ATTENTION), CUDA only"
    backend = SDPBackend.CUDNN_ATTENTION
    devices = ("cuda",)
    dtypes = ("bfloat16", "float16")
