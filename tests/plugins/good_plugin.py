"""A plugin file for the registry tests: one plain function registered with ``@register``.

Loaded with ``Registry().load_file(path)`` (the CLI's ``--plugin``), never imported as a module.
"""

from __future__ import annotations

import torch

from harness import register


@register(
    "good_plugin_attn", description="plain softmax attention from a plugin file", features=["causal", "gqa", "cross"]
)
def good_plugin_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float) -> torch.Tensor:
    """Softmax attention, bottom-right causal, grouped heads repeated."""
    group = q.shape[1] // k.shape[1]
    k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))  # [B, H, Nk, D]
    scores = (q @ k.transpose(-1, -2)) * scale  # [B, H, Nq, Nk]
    if causal:
        nq, nk = scores.shape[-2:]
        keep = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril(nk - nq)  # [Nq, Nk]
        scores = scores.masked_fill(~keep, float("-inf"))
    return scores.softmax(dim=-1).nan_to_num(0.0) @ v  # [B, H, Nq, D]
