"""transformers' ``sdpa_attention_forward`` wrapped by hand, wrong in the two ways a user most
easily gets it wrong (the tests plant them and expect ``inaccurate``):

* ``top_left_causal``: no mask and the module's ``is_causal`` on a cross case. SDPA aligns
  ``is_causal`` top-left, and transformers, taking a missing mask for an empty-cache prefill,
  keeps only the first ``Nq`` keys: the queries no longer end at the last key.
* ``window_without_local_size``: the window's mask built with transformers' mask interface but
  without the ``local_size`` its ``create_sliding_window_causal_mask`` passes: SDPA's mask is
  then skipped as plain causal, and the window is lost.
"""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask, sliding_window_causal_mask_function

from attnbench import Implementation, Problem, register
from attnbench.plugins.contract import AttentionFn

Tensor = torch.Tensor


class _Layer(torch.nn.Module):
    def __init__(self, problem: Problem) -> None:
        super().__init__()
        self.num_key_value_groups = problem.heads // problem.kv_heads
        self.is_causal = problem.causal
        self.train(False)


@register("top_left_causal")
class TopLeftCausal(Implementation):
    description = "hf sdpa_attention_forward with is_causal and no mask on every case (wrong on cross cases)"
    computes = ("full", "causal", "window")
    features = frozenset({"causal", "window", "gqa", "cross"})

    def prepare(self, problem: Problem) -> AttentionFn:
        layer = _Layer(problem)

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            out, _ = sdpa_attention_forward(layer, q, k, v, None, scaling=problem.scale)  # [B, Nq, H, D]
            return out.transpose(1, 2)  # [B, H, Nq, D]

        return run


@register("window_without_local_size")
class WindowWithoutLocalSize(Implementation):
    description = "hf sdpa_attention_forward with a window mask built without local_size (the window is lost)"
    computes = ("full", "causal", "window")
    features = frozenset({"causal", "window", "gqa", "cross"})

    def prepare(self, problem: Problem) -> AttentionFn:
        layer = _Layer(problem)
        mask = sdpa_mask(
            batch_size=problem.batch,
            q_length=problem.seq_len,
            kv_length=problem.kv_len,
            q_offset=problem.kv_len - problem.seq_len,
            mask_function=sliding_window_causal_mask_function(problem.window),
        )  # [B, 1, Nq, Nk] bool, or None

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            out, _ = sdpa_attention_forward(layer, q, k, v, mask, scaling=problem.scale)  # [B, Nq, H, D]
            return out.transpose(1, 2)  # [B, H, Nq, D]

        return run
