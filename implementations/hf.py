"""Hugging Face transformers' attention functions, called as a transformers decoder layer calls them.

A model in transformers picks its attention with ``attn_implementation=``: the name is looked up
in ``AttentionInterface`` (``sdpa``, ``flex_attention``, ``flash_attention_2/3/4``,
``paged|eager``) or is ``eager``, the plain matmul–softmax–matmul each model file defines (here
Llama's, which most decoder files copy). Each is registered here as ``hf:NAME`` (``|`` written
``:``), so a user can ask "should I switch ``attn_implementation``" of the shapes of their model.

A call is made the way a decoder layer makes it:

* the function gets a module carrying what it reads: ``num_key_value_groups`` (query heads per
  KV head; the function repeats K and V itself, or passes ``enable_gqa``), ``is_causal``,
  ``training`` (False: no dropout), ``scaling`` and the ``config``'s ``_attn_implementation``;
* queries, keys and values in attnbench's layout, ``[B, H, N, D]`` (a layer transposes its
  projections to that layout before the call);
* the mask built by transformers' own mask interface for that name
  (``ALL_MASK_ATTENTION_FUNCTIONS``: a boolean tensor or None for ``sdpa``, an additive float
  tensor for ``eager``, a ``BlockMask`` for ``flex_attention``) from transformers' mask
  functions — causal, sliding-window causal, bidirectional, bidirectional window — with the
  queries at the end of the keys (``q_offset = Nk − Nq``: bottom-right, as a layer with a KV
  cache sets ``cache_position``), built in :meth:`prepare`, outside the timing, as a model builds
  it once per forward for all its layers;
* the output, ``[B, N, H, D]``, transposed back to ``[B, H, N, D]`` (a view).

attnbench's window ``W`` keeps the keys with ``p − W < j <= p`` (causal) or ``|p − j| < W``:
transformers' ``sliding_window_causal_mask_function(W)`` and
``sliding_window_bidirectional_mask_function(W − 1)`` (its bidirectional window is inclusive).

Availability is decided without importing transformers (importing ``transformers.modeling_utils``
costs about 5 s, paid at every worker's start otherwise): the package must be installed, the
FlashAttention names need CUDA and transformers' own ``is_flash_attn_N_available()``, and the
``paged|`` functions read transformers' ``PagedAttentionCache`` from continuous batching, which no
attnbench case builds. The function itself is imported in :meth:`prepare`; where a release moved
it, the case ends ``error`` with the import's message, and ``tests/test_hf.py`` fails.

A decode step is made as transformers makes one against a ``DynamicCache``: the new tokens
appended, then one batched call on the keys up to the longest sequence, with a mask built per
sequence (its queries at the end of its own keys, the keys past them padding, through
transformers' 2-D ``attention_mask``). ``flex_attention`` and paged caches go through attnbench's
dense-cache adapter (each sequence's keys, one call each).

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from collections.abc import Callable
from functools import cache
from typing import Any, ClassVar

import torch

from attnbench import Availability, Growth, Implementation, Problem, register
from attnbench.case.kvcache import KVCache
from attnbench.implementations._inductor_isa import use_cached_probe
from attnbench.plugins.contract import AttentionFn, Computes

Tensor = torch.Tensor

#: transformers' attention function names (``AttentionInterface``'s, and ``eager``) as of the
#: tested releases; ``tests/test_hf.py`` fails when an installed release registers another.
KNOWN = (
    "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4", "paged|eager"
)  # fmt: skip


def hf_name(key: str) -> str:
    """The attnbench name of transformers' function ``key``: ``hf:sdpa``, ``hf:paged:eager``."""
    return "hf:" + key.replace("|", ":")


def dispatched() -> list[str]:
    """The ``hf:`` names a model's ``attn_implementation`` chooses among (the paged ones are
    continuous batching's, chosen by ``generate_batch``)."""
    return [hf_name(key) for key in KNOWN if not key.startswith("paged|")]


def installed() -> str | None:
    """transformers' version, or None when it is not installed (without importing it)."""
    if importlib.util.find_spec("transformers") is None:
        return None
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


@cache
def function_of(key: str) -> Callable[..., tuple[Tensor, Any]]:
    """transformers' attention function ``key``, as a layer looks it up."""
    if key == "eager":  # each model file defines its own; Llama's is the one most files copy
        module = importlib.import_module("transformers.models.llama.modeling_llama")
        fn: Callable[..., tuple[Tensor, Any]] = module.eager_attention_forward
        return fn
    registry = importlib.import_module("transformers.modeling_utils").ALL_ATTENTION_FUNCTIONS
    found: Callable[..., tuple[Tensor, Any]] = registry[key]
    return found


def mask_function(problem: Problem) -> tuple[Callable[..., Any], int | None]:
    """transformers' mask function for the problem's pattern, and its window as transformers
    states it (``sliding_window``; None without one)."""
    masks = importlib.import_module("transformers.masking_utils")
    if problem.causal:
        if problem.window:
            return masks.sliding_window_causal_mask_function(problem.window), problem.window
        return masks.causal_mask_function, None
    if problem.window:  # transformers' bidirectional window keeps |q - kv| <= W; attnbench's keeps < W
        return masks.sliding_window_bidirectional_mask_function(problem.window - 1), problem.window - 1
    return masks.bidirectional_mask_function, None


def build_mask(
    key: str, problem: Problem, kv_len: int | None = None, q_offset: int | None = None, valid: int | None = None
) -> Any:
    """The mask transformers' mask interface builds for ``key`` (``sdpa``: ``[B, 1, Nq, Nk]`` bool
    or None; ``eager``: ``[B, 1, Nq, Nk]`` additive float; ``flex_attention``: a ``BlockMask``),
    the queries at the end of the keys (``q_offset``, default ``Nk − Nq``). For one sequence of
    a padded decode batch, ``valid`` of the ``kv_len`` keys are its own: the rest are padding,
    masked through transformers' 2-D ``attention_mask``, and no mask is skipped."""
    interface = importlib.import_module("transformers.masking_utils").ALL_MASK_ATTENTION_FUNCTIONS
    fn, window = mask_function(problem)
    nk = problem.kv_len if kv_len is None else kv_len
    padding = None if valid is None else (torch.arange(nk, device=problem.device) < valid)[None, :]  # [1, Nk]
    skip = padding is None
    return interface[key.removeprefix("paged|")](  # the arguments create_*_mask passes
        batch_size=problem.batch if valid is None else 1,
        q_length=problem.seq_len,
        kv_length=nk,
        q_offset=nk - problem.seq_len if q_offset is None else q_offset,
        kv_offset=0,
        mask_function=fn,
        attention_mask=padding,
        allow_is_causal_skip=skip and problem.causal,
        allow_is_bidirectional_skip=skip and not problem.causal,
        local_size=window,  # without it, sdpa's mask skips a window as if it were plain causal
        dtype=problem.torch_dtype,
        device=problem.device,
        use_vmap=False,
    )


class LayerStandIn(torch.nn.Module):
    """What transformers' attention functions read from the attention module that calls them."""

    def __init__(self, key: str, problem: Problem) -> None:
        super().__init__()
        self.num_key_value_groups = problem.heads // problem.kv_heads
        self.is_causal = problem.causal
        self.scaling = problem.scale
        self.layer_idx = 0
        self.config = type("Config", (), {"_attn_implementation": key})()
        self.train(False)


class _HF(Implementation):
    """One transformers attention function (``key``), called as a decoder layer calls it."""

    key: ClassVar[str] = "sdpa"
    exact = True
    library = "transformers"
    computes: ClassVar[tuple[Computes, ...]] = ("full", "causal", "window")
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    dtypes: ClassVar[tuple[str, ...]] = ("float32", "bfloat16", "float16")
    features = frozenset({"causal", "window", "gqa", "cross", "backward"})
    growth = Growth(2.0, 1.0)

    def available(self) -> Availability:
        version = installed()
        if version is None:
            return Availability.no("transformers is not installed (pip install -e '.[hf]')")
        if "cpu" not in self.devices and not torch.cuda.is_available():
            return Availability.no(f"{self.name} runs on CUDA only and torch.cuda.is_available() is False")
        return Availability.yes()

    def supports(self, problem: Problem) -> str | None:
        reason = super().supports(problem)
        if reason is not None:
            return reason
        if problem.causal and problem.seq_len > problem.kv_len:
            return (
                f"{self.name}: a causal case with more queries than keys (some queries see no key) is"
                " not one a transformers layer makes; its queries always end at the last key"
            )
        return None

    def prepare(self, problem: Problem) -> AttentionFn:
        fn = function_of(self.key)
        mask = build_mask(self.key, problem)
        module = LayerStandIn(self.key, problem)
        scale = problem.scale

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            out, _ = fn(module, q, k, v, mask, dropout=0.0, scaling=scale)  # [B, Nq, H, D]
            return out.transpose(1, 2)  # [B, H, Nq, D]

        return run

    def prepare_decode(self, problem: Problem, cache: KVCache) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """A decode step as transformers makes one: the new tokens appended, then one call on the
        batch's keys up to the longest sequence, each sequence's shorter keys masked as padding
        (its queries at the end of its own keys). A paged cache goes through the dense-cache
        adapter (each sequence's tokens gathered)."""
        if cache.paged:
            return super().prepare_decode(problem, cache)
        fn, module, scale = function_of(self.key), LayerStandIn(self.key, problem), problem.scale
        lengths = [int(n) for n in cache.attended]
        longest, new = max(lengths), cache.new
        if len(set(lengths)) == 1:
            mask = build_mask(self.key, problem, kv_len=longest)
        else:
            mask = torch.cat([build_mask(self.key, problem, longest, n - new, n) for n in lengths])  # [B, 1, S, Lmax]

        def step(q: Tensor, k_new: Tensor, v_new: Tensor) -> Tensor:
            cache.append(k_new, v_new)
            k, v = cache.k[:, :, :longest], cache.v[:, :, :longest]  # [B, Hkv, Lmax, D] views
            out, _ = fn(module, q, k, v, mask, dropout=0.0, scaling=scale)  # [B, S, H, D]
            return out.transpose(1, 2)  # [B, H, S, D]

        return step


@register(hf_name("sdpa"))
class HFSDPA(_HF):
    description = "transformers' sdpa_attention_forward (attn_implementation='sdpa', its default)"
    key = "sdpa"


@register(hf_name("eager"))
class HFEager(_HF):
    description = "transformers' eager_attention_forward (Llama's; attn_implementation='eager'): scores materialized"
    key = "eager"
    growth = Growth(2.0, 2.0)


@register(hf_name("flex_attention"))
class HFFlex(_HF):
    description = (
        "transformers' flex_attention_forward (attn_implementation='flex_attention'): FlexAttention"
        " compiled by transformers, with its BlockMask"
    )
    key = "flex_attention"

    def supports(self, problem: Problem) -> str | None:
        reason = super().supports(problem)
        if reason is None and problem.needs_grad and problem.device == "cpu":
            return "FlexAttention's backward runs on CUDA only (PyTorch raises NotImplementedError on the CPU)"
        return reason

    def prepare_decode(self, problem: Problem, cache: KVCache) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """The dense-cache adapter: a ``BlockMask`` per sequence cannot be stacked into one."""
        return Implementation.prepare_decode(self, problem, cache)

    def prepare(self, problem: Problem) -> AttentionFn:
        if problem.device == "cpu":
            use_cached_probe()
        run = super().prepare(problem)
        q, k, v = problem.make_inputs()  # the first call compiles, outside the timing
        with torch.no_grad():
            run(q, k, v)
        return run


class _HFFlash(_HF):
    """transformers' FlashAttention functions: CUDA and the flash-attn package, as transformers
    itself decides (``is_flash_attn_N_available``)."""

    devices = ("cuda",)
    dtypes = ("bfloat16", "float16")
    computes = ("full", "causal")
    features = frozenset({"causal", "gqa", "cross", "backward"})
    version: ClassVar[int] = 2

    def available(self) -> Availability:
        basic = super().available()
        if not basic.ok:
            return basic
        utils = importlib.import_module("transformers.utils")
        if not getattr(utils, f"is_flash_attn_{self.version}_available")():
            return Availability.no(f"transformers.utils.is_flash_attn_{self.version}_available() is False")
        return Availability.yes()


@register(hf_name("flash_attention_2"))
class HFFlash2(_HFFlash):
    description = "transformers' flash_attention_forward with FlashAttention-2 (CUDA, flash-attn)"
    key = "flash_attention_2"


@register(hf_name("flash_attention_3"))
class HFFlash3(_HFFlash):
    description = "transformers' flash_attention_forward with FlashAttention-3 (Hopper, flash-attn 3)"
    key = "flash_attention_3"
    version = 3


@register(hf_name("flash_attention_4"))
class HFFlash4(_HFFlash):
    description = "transformers' flash_attention_forward with FlashAttention-4 (flash-attn 4)"
    key = "flash_attention_4"
    version = 4


@register(hf_name("paged|eager"))
class HFPagedEager(_HF):
    description = "transformers' eager_paged_attention_forward (continuous batching's paged cache)"
    key = "paged|eager"

    def available(self) -> Availability:
        return Availability.no(
            "transformers' paged functions read the PagedAttentionCache of its continuous batching"
            " (generate_batch) from their call's keywords; no attnbench case builds one"
        )
