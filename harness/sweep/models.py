"""Suites from a model's own shapes: ``attnbench suite --model CONFIG``.

"Which attention for my model" starts from the model's attention shapes: its query heads, its
key/value heads, its head dimension, its sliding window and its context length. They are read from
a Hugging Face-style ``config.json`` (or a preset shipped in ``suites/models/``, each citing
the ``config.json`` its numbers come from), under the names the common model families use:

* heads: ``num_attention_heads``, ``n_head``, ``num_heads``;
* key/value heads: ``num_key_value_heads``, ``num_kv_heads``, ``n_kv_heads`` (default: the
  heads; ``multi_query: true`` means one);
* head dim: ``head_dim``, else ``hidden_size`` / ``n_embd`` / ``d_model`` over the heads;
* window: ``sliding_window`` (ignored when ``use_sliding_window`` is false or it covers the
  context);
* what the model does to its scores: ``attn_logit_softcapping`` (Gemma 2), ALiBi (``alibi: true``,
  MPT's ``attn_config.alibi``, or ``model_type`` ``bloom``), learned sinks (``model_type``
  ``gpt_oss``); windowed and global layers alternate where ``layer_types`` holds both;
* dtype: ``torch_dtype``, else ``dtype``;
* context: ``max_position_embeddings``, ``n_positions``, ``max_seq_len``, ``seq_length``; an
  image model's tokens from ``image_size`` and ``patch_size`` (patches and a class token).

Encoder families (BERT, RoBERTa, ViT, …) attend both ways and do not decode. The suite has one
grid each for prefill at lengths doubling up to the context, decode against caches of lengths
doubling up to the context (batch 1 and 8, uniform and ragged) and training (forward+backward;
a decoder's on packed batches of 8 long-tailed documents), each with the model's window where it
has one — both with and without it for models that alternate windowed and global layers
(``"_attnbench": {"alternating_window": true}``). A model's soft-cap, ALiBi and learned sinks
reach its decode grid too. Multi-head latent attention (``qk_nope_head_dim``,
``qk_rope_head_dim``, ``v_head_dim``) is read in its prefill form: keys of the two first summed,
values of the third, a key/value head per query head; a config with only part of those keys is
refused, naming the missing one. It decodes in its absorbed form: one KV head of ``kv_lora_rank
+ qk_rope_head_dim`` columns per token, its first ``kv_lora_rank`` the values (``latent``); without
``kv_lora_rank`` the suite has no decode grid.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attnbench.suites as _shipped

MODELS_DIR = Path(_shipped.__file__).resolve().parent / "models"
ENCODERS = ("bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta", "vit", "deit", "beit")


class ModelConfigError(ValueError):
    """A config that cannot describe a model's attention, naming the key."""


@dataclass(frozen=True)
class ModelShapes:
    """A model's attention shapes, as a suite needs them."""

    name: str
    heads: int
    kv_heads: int
    head_dim: int
    context: int
    window: int = 0
    alternating_window: bool = False
    causal: bool = True
    decodes: bool = True
    dtype: str = "bfloat16"
    source: str = ""
    lengths: list[int] = field(default_factory=list)  # fixed lengths (an image model's tokens)
    softcap: float = 0.0
    bias: str = "none"
    sinks: str = "none"
    v_head_dim: int = 0  # multi-head latent attention's values (0: head_dim)
    latent: int = 0  # its absorbed decode form's latent (kv_lora_rank), keys of latent + rope dims
    rope: int = 0  # qk_rope_head_dim

    def variant_words(self) -> str:
        """``soft-capping at 50``, ``ALiBi``, ``learned sinks``, ``values of 128 dimensions``: what
        the model computes beyond plain softmax attention."""
        words = [f"soft-capping at {self.softcap:g}"] if self.softcap else []
        words += ["ALiBi"] if self.bias == "alibi" else []
        words += [f"values of {self.v_head_dim} dimensions"] if self.v_head_dim else []
        return ", ".join(words + ([f"sinks ({self.sinks})"] if self.sinks != "none" else []))

    @property
    def variants(self) -> dict[str, Any]:
        """The case fields beyond plain softmax attention's, where the model sets them."""
        out: dict[str, Any] = {"softcap": self.softcap} if self.softcap else {}
        out |= {"bias": self.bias} if self.bias != "none" else {}
        out |= {"v_head_dim": self.v_head_dim} if self.v_head_dim else {}
        return out | ({"sinks": self.sinks} if self.sinks != "none" else {})


#: Multi-head latent attention's keys (DeepSeek-V2/V3, Kimi K2). Its prefill form is read: per
#: head, keys of ``qk_nope_head_dim + qk_rope_head_dim`` dimensions and values of ``v_head_dim``;
#: ``kv_lora_rank`` is the latent of its absorbed decode form: one KV head of ``kv_lora_rank +
#: qk_rope_head_dim`` columns, its first ``kv_lora_rank`` the values (case field ``latent``).
MLA_KEYS = ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")


def presets() -> dict[str, Path]:
    """The shipped model presets by name."""
    return {p.stem: p for p in sorted(MODELS_DIR.glob("*.json"))}


def load_config(spec: str) -> tuple[str, dict[str, Any]]:
    """``(name, config)`` from a preset name or a ``config.json`` path."""
    path = Path(spec)
    if not path.is_file():
        known = presets()
        if spec not in known:
            raise ModelConfigError(f"--model {spec!r}: no such config file or preset (presets: {', '.join(known)})")
        path = known[spec]
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelConfigError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(config, dict):
        raise ModelConfigError(f"{path}: a config is a JSON object of keys, not {type(config).__name__}")
    name = str(config.get("_name") or (path.parent.name if path.name == "config.json" else path.stem))
    return name, config


def _int(config: dict[str, Any], keys: tuple[str, ...], where: str, required: bool = True) -> int | None:
    for key in keys:
        if key in config and config[key] is not None:
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelConfigError(f"{where}: {key} = {value!r}: expected a positive integer")
            return value
    if required:
        raise ModelConfigError(f"{where}: no {keys[0]} (nor {', '.join(keys[1:])}): the model's attention needs it")
    return None


def shapes_of(name: str, config: dict[str, Any]) -> ModelShapes:
    """The attention shapes a config describes (see the module for the keys read)."""
    where = f"--model {name}"
    heads = _int(config, ("num_attention_heads", "n_head", "num_heads"), where)
    assert heads is not None
    kv = (
        1
        if config.get("multi_query") is True
        else _int(config, ("num_key_value_heads", "num_kv_heads", "n_kv_heads"), where, False)
    )
    kv_heads = kv or heads
    if heads % kv_heads:
        raise ModelConfigError(
            f"{where}: num_key_value_heads = {kv_heads} does not divide num_attention_heads = {heads}"
        )
    head_dim = _int(config, ("head_dim",), where, False)
    if head_dim is None:
        hidden = _int(config, ("hidden_size", "n_embd", "d_model"), where, False)
        if hidden is None:
            raise ModelConfigError(f"{where}: no head_dim, and no hidden_size (nor n_embd, d_model) to derive it from")
        if hidden % heads:
            raise ModelConfigError(
                f"{where}: hidden_size = {hidden} is not a multiple of num_attention_heads = {heads}"
            )
        head_dim = hidden // heads
    options = config.get("_attnbench") or {}
    lengths: list[int] = list(options.get("lengths") or [])
    image, patch = config.get("image_size"), config.get("patch_size")
    if not lengths and isinstance(image, int) and isinstance(patch, int) and patch > 0:
        lengths = [(image // patch) ** 2 + 1]  # the patches and a class token
    context = _int(config, ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"), where, not lengths)
    context = context or max(lengths)
    v_head_dim = latent = rope = 0
    if any(config.get(key) is not None for key in (*MLA_KEYS, "kv_lora_rank")):
        for key in MLA_KEYS:
            if _int(config, (key,), where, False) is None:
                raise ModelConfigError(
                    f"{where}: multi-head latent attention without {key}: its prefill form needs"
                    f" {', '.join(MLA_KEYS)} (attnbench does not model the absorbed decode form alone)"
                )
        head_dim = int(config["qk_nope_head_dim"]) + int(config["qk_rope_head_dim"])
        v_head_dim = int(config["v_head_dim"]) if config["v_head_dim"] != head_dim else 0
        kv_heads = heads  # after the up-projection every head has its own keys and values
        latent = _int(config, ("kv_lora_rank",), where, False) or 0
        rope = int(config["qk_rope_head_dim"]) if latent else 0
    window = _int(config, ("sliding_window",), where, False) or 0
    if config.get("use_sliding_window") is False or window >= context:
        window = 0
    layer_types = set(config.get("layer_types") or ())
    alternating = bool(options.get("alternating_window")) or {"sliding_attention", "full_attention"} <= layer_types
    softcap = config.get("attn_logit_softcapping") or 0.0
    if isinstance(softcap, bool) or not isinstance(softcap, int | float) or softcap < 0:
        raise ModelConfigError(f"{where}: attn_logit_softcapping = {softcap!r}: expected a number >= 0")
    model_type = str(config.get("model_type", "")).lower()
    attn_config = config.get("attn_config")
    mpt_alibi = isinstance(attn_config, dict) and attn_config.get("alibi") is True
    alibi = config.get("alibi") is True or model_type == "bloom" or mpt_alibi
    encoder = model_type in ENCODERS or config.get("is_decoder") is False
    dtype_key = "torch_dtype" if config.get("torch_dtype") else "dtype"
    dtype = str(config.get(dtype_key) or "bfloat16")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ModelConfigError(f"{where}: {dtype_key} = {dtype!r}: expected float32, bfloat16 or float16")
    return ModelShapes(
        name=name, heads=heads, kv_heads=kv_heads, head_dim=head_dim, context=context, window=window,
        alternating_window=alternating and window > 0, causal=not encoder,
        decodes=not encoder, dtype=dtype, source=str(config.get("_source") or ""), lengths=lengths,
        softcap=float(softcap), bias="alibi" if alibi else "none",
        sinks="learned" if model_type == "gpt_oss" else "none", v_head_dim=v_head_dim, latent=latent, rope=rope,
    )  # fmt: skip


def doubling(low: int, high: int) -> list[int]:
    """Powers of two from ``low`` up to ``high``, and ``high`` itself."""
    out, n = [], low
    while n < high:
        out.append(n)
        n *= 2
    return [*out, high]


def _dispatched_lines(names: Sequence[str]) -> list[str]:
    if not names:
        return []
    return [
        "# \"all\" holds transformers' attention functions, among which the model's attn_implementation",
        '# chooses (default "sdpa"; pip install -e ".[hf]"; FlashAttention needs CUDA):',
        "# " + ", ".join(names),
    ]


def _baseline_lines(shapes: ModelShapes) -> list[str]:
    """SDPA is the baseline, unless the model soft-caps its scores or has learned sinks, which SDPA
    cannot compute: then naive, the implementation that computes every variant."""
    if not shapes.softcap and shapes.sinks == "none":
        return ['baseline = "sdpa"']
    return [
        f"# The baseline must compute the model's {shapes.variant_words()}, which SDPA cannot (it has no",
        "# score hook for a soft-cap, no log-sum-exp for sinks): naive, which computes every variant.",
        'baseline = "naive"',
    ]


def suite_text(shapes: ModelShapes, dispatched: Sequence[str] = ()) -> str:
    """A suite TOML for the model: prefill, decode and training grids (see the module), run by
    every implementation, the ``dispatched`` ones named (transformers' functions for the model's
    ``attn_implementation``)."""
    slug = "".join(c if c.isalnum() else "-" for c in shapes.name.lower()).strip("-")
    windows = [0, shapes.window] if shapes.alternating_window else [shapes.window]
    prefill = shapes.lengths or doubling(min(512, shapes.context), shapes.context)
    train = shapes.lengths or doubling(min(512, shapes.context), min(shapes.context, 4096))
    packs = shapes.causal and not shapes.lengths  # a decoder trains on packed documents

    def grid_keys(heads: int, kv_heads: int, head_dim: int, variants: dict[str, Any]) -> str:
        return (
            f"heads = [{heads}]\nkv_heads = [{kv_heads}]\nhead_dim = [{head_dim}]\n"
            f'dtype = ["{shapes.dtype}"]\ncausal = [{str(shapes.causal).lower()}]\nwindow = {windows}\n'
            + "".join(f"{key} = {json.dumps([value])}\n" for key, value in variants.items())
        )

    common = grid_keys(shapes.heads, shapes.kv_heads, shapes.head_dim, shapes.variants)
    lines = [
        f"# The attention shapes of {shapes.name}" + (f", from {shapes.source}" if shapes.source else "") + ".",
        "# Written by `attnbench suite --model`; edit freely.",
        "[suite]",
        f'name = "model-{slug}"',
        f'description = "{shapes.name}: {shapes.heads} heads over {shapes.kv_heads} KV heads, head dim'
        f" {shapes.head_dim}, context {shapes.context}"
        + (f", window {shapes.window}" if shapes.window else "")
        + (f", {shapes.variant_words()}" if shapes.variants else "")
        + '"',
        'implementations = "all"',
        *_baseline_lines(shapes),
        *_dispatched_lines(dispatched),
        "",
        "# Prefill: the whole prompt at once.",
        "[[grid]]",
        'mode = ["forward"]',
        f"seq_len = {prefill}",
        common,
    ]
    decode = common
    if shapes.latent:  # MLA decodes in its absorbed form: one latent KV head, the values its first columns
        latent = shapes.variants | {"v_head_dim": shapes.latent, "latent": True}
        decode = grid_keys(shapes.heads, 1, shapes.latent + shapes.rope, latent)
    if shapes.decodes and shapes.v_head_dim and not shapes.latent:
        lines += [
            f"# Decode: not written. The model's values of {shapes.v_head_dim} dimensions and no kv_lora_rank"
            " (the latent multi-head latent attention decodes over):",
            "# a decode grid without it would time a function the model does not compute.",
            "",
        ]
    elif shapes.decodes:
        caches = [n for n in doubling(min(1024, shapes.context), shapes.context)]
        absorbed = (
            f" In multi-head latent attention's absorbed form: one latent KV head of {shapes.latent} +"
            f" {shapes.rope} rotary\n# dimensions read once by all {shapes.heads} query heads, its first"
            f" {shapes.latent} the values."
        )
        lines += [
            "# Decode: one new token against the KV cache." + (absorbed if shapes.latent else ""),
            "[[grid]]",
            'mode = ["decode"]',
            "batch = [1, 8]",
            "seq_len = [1]",
            f"kv_len = {caches}",
            'kv_lengths = ["uniform", "ragged"]',
            decode,
        ]
    lines += [
        "# Training: forward and backward"
        + (
            ", on packed batches of 8 documents of long-tailed lengths, as training batches real text."
            if packs
            else "."
        ),
        "[[grid]]",
        'mode = ["forward_backward"]',
        f"seq_len = {train}",
        common + ('documents = ["longtail:8"]\n' if packs else ""),
        "[budget]",
        "timeout_s = 60",
        "memory_gib = 8",
        "min_time_s = 0.1",
        "max_time_s = 1.0",
        "",
    ]
    return "\n".join(lines)
