"""What today's models do to the scores: logit soft-capping, ALiBi and attention sinks.

A case computes softmax attention; three case fields change its scores the way shipped models
do, each defined here once for the float64 reference, the plain low-precision comparator and the
implementations that take it:

* ``softcap = c > 0`` (Gemma 2: 50; Grok): each scaled score ``s`` becomes ``c · tanh(s / c)``,
  before any bias or mask. A case's standard-normal inputs give scores of spread 1, where a cap
  of 50 does nothing (``50·tanh(4/50)`` is 3.998): a kernel that ignored the cap would pass. So
  with a cap the queries are scaled by ``c / 1.5`` (:data:`SOFTCAP_SPREAD`) and the scores spread
  to two thirds of the cap, where the tanh bends. FlashAttention's tests scale by ``c / 4``; at a
  quarter of the cap, bfloat16's own error (a score near 16 is rounded to a sixteenth: 0.20 in
  the output, causal, N = 2048, 8/2 heads) is as large as what a cap of 45 where 50 is asked
  moves (0.29), and the criterion could not tell them apart. At two thirds, the cap of 45 moves
  the output by 0.80 in float32, float16 and bfloat16, against bounds of 2e-5, 0.053 and 0.42,
  and at 1K-4K tokens over three seeds by 1.8-2.7 times the bfloat16 bound.
* ``bias = "alibi"`` (BLOOM, MPT): head ``h`` adds ``−slope_h · |p − j|`` to the pair of a query at
  key position ``p`` and key ``j`` (queries aligned bottom-right, as every pattern is), with
  BLOOM's slopes (:func:`alibi_slopes`): ``2^(−8(h+1)/H)`` for a power-of-two ``H``. Under causal
  masking ``|p − j| = p − j``, which FlashAttention's ``alibi_slopes`` and the key-position form
  ``+slope_h · j`` of BLOOM's code agree with up to a per-row constant, which the softmax ignores.
* ``sinks = "first:K"`` (StreamingLLM): the first ``K`` tokens stay visible to every query beside
  a window (a pattern: :mod:`attnbench.case.patterns`, no score changes), what keeps windowed
  models stable at long context.
* ``sinks = "learned"`` (gpt-oss): head ``h`` has a sink logit ``σ_h`` that joins every row's
  softmax denominator and carries no value, ``o = Σ_j e^{s_j} v_j / (e^{σ_h} + Σ_j e^{s_j})``.
  The logits are seeded from the case's seed (:func:`sink_logits`), uniform in [1, 8): at the
  lengths the suites run (row log-sum-exps near ``log N``, 7 at 1K), some heads lose a few
  percent of their mass to the sink and others most of it, so a dropped sink cannot pass.

Layer ``case``: imports nothing of attnbench outside ``attnbench.case``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from attnbench.case.documents import parse_documents
from attnbench.case.probes import DOCUMENT_PROBES

Tensor = torch.Tensor

#: The score biases a case can ask for.
BIASES = ("none", "alibi")
#: The attention sinks a case can ask for (and ``first:K``: StreamingLLM's first ``K`` tokens).
SINKS = ("none", "learned")
#: With a soft-cap ``c`` the queries are scaled by ``c / SOFTCAP_SPREAD``: scores of spread 2c/3.
SOFTCAP_SPREAD = 1.5
#: The range the seeded sink logits are drawn from, uniformly.
SINK_RANGE = (1.0, 8.0)


def alibi_slopes(heads: int) -> Tensor:
    """``[H]`` float64: BLOOM's ALiBi slopes (Press et al. 2022): for the largest power of two
    ``n <= H``, ``2^(−8i/n)`` for ``i = 1..n``; the remaining heads take every other slope of
    ``2n`` heads, ``2^(−4i/n)`` for odd ``i``."""
    n = 1 << (heads.bit_length() - 1)  # the largest power of two <= heads
    slopes = [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]
    slopes += [2.0 ** (-4.0 * i / n) for i in range(1, 2 * min(n, heads - n), 2)]
    return torch.tensor(slopes, dtype=torch.float64)


def sink_logits(heads: int, seed: int) -> Tensor:
    """``[H]`` float64: each head's sink logit, seeded (the same for every implementation)."""
    gen = torch.Generator().manual_seed(seed * 7919 + 17)
    low, high = SINK_RANGE
    return low + (high - low) * torch.rand(heads, generator=gen, dtype=torch.float64)


def case_sinks(p: Any) -> Tensor | None:
    """``[H]`` float32 on a case's device: its heads' sink logits, or None without learned sinks
    (``p`` a :class:`~attnbench.case.problem.Problem`)."""
    return sink_logits(p.heads, p.seed).to(p.device, torch.float32) if p.learned_sinks else None


def alibi_bias(heads: int, nq: int, nk: int) -> Tensor:
    """``[H, Nq, Nk]`` float64: ALiBi's ``−slope_h·|p − j|`` for every pair, queries aligned
    bottom-right (for the implementations that add it as a dense bias)."""
    return -alibi_slopes(heads)[:, None, None] * distance(positions(nq, nk), torch.arange(nk))


def alibi_decode(heads: int, attended: Tensor, new: int, length: int) -> Tensor:
    """``[B, H, S, L]`` float64: ALiBi's ``−slope_h·|p − j|`` for a decode step, each sequence's
    ``new`` tokens at the last of its ``attended`` ``[B]`` positions, against key positions
    ``0..length−1`` (a cache read up to its longest sequence)."""
    rows = attended.to(torch.float64)[:, None] - new + torch.arange(new, dtype=torch.float64)  # [B, S]
    gap = distance(rows[:, :, None], torch.arange(length, dtype=torch.float64))  # [B, S, L]
    return -alibi_slopes(heads)[None, :, None, None] * gap[:, None]


def soft_cap(s: Tensor, cap: float) -> Tensor:
    """``cap · tanh(s / cap)`` (``s`` unchanged when ``cap`` is 0)."""
    return s if not cap else torch.tanh(s / cap) * cap


def soft_cap_slope(capped: Tensor, cap: float) -> Tensor:
    """``d capped / d s = 1 − tanh²(s / cap)``, from the capped scores: the backward's factor."""
    return 1.0 - (capped / cap) ** 2


def distance(q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """``|p − j|`` for query positions ``[R, 1]`` (or ``[..., R, 1]``) and key positions ``[C]``."""
    return (q_pos - k_pos).abs()


def positions(nq: int, nk: int, rows: Tensor | None = None, device: torch.device | str = "cpu") -> Tensor:
    """``[R, 1]`` float64 key positions of the query ``rows`` (every row when None), aligned
    bottom-right: query ``i`` of ``nq`` sits at ``i + nk − nq``."""
    index = torch.arange(nq, device=device) if rows is None else rows.to(device)
    return (index + (nk - nq)).to(torch.float64)[:, None]


def parse_sinks(spec: str) -> int:
    """How many first tokens ``spec`` keeps visible: ``K`` for ``"first:K"``, 0 for ``"none"`` and
    ``"learned"``; a ValueError for anything else."""
    if spec in SINKS:
        return 0
    kind, _, count = spec.partition(":")
    if kind != "first" or not count.isdigit() or int(count) < 1:
        raise ValueError(f"sinks {spec!r}: expected 'none', 'learned' or 'first:K' with K >= 1 (e.g. 'first:4')")
    return int(count)


def softcap_ok(value: Any) -> bool:
    """Whether a soft-cap is 0 (none) or a positive finite number."""
    return bool(value >= 0 and math.isfinite(value))


def check_variants(p: Any) -> None:
    """A ValueError naming the keys of a case (a :class:`~attnbench.case.problem.Problem`) whose
    variants do not go together (see the module, :mod:`attnbench.case.documents`); what is not
    modelled yet says so."""
    if not softcap_ok(p.softcap):
        raise ValueError(f"softcap must be 0 (none) or a positive number, got {p.softcap}")
    if p.bias not in BIASES:
        raise ValueError(f"unknown bias {p.bias!r}; expected one of {list(BIASES)}")
    if parse_sinks(p.sinks) and (p.documents != "1" or p.layout != "dense"):
        raise ValueError(f"sinks {p.sinks!r} keeps the sequence's first tokens: not with documents or a block layout")
    parse_documents(p.documents)
    if p.documents != "1" and (p.cross or p.kind.reads_cache):
        raise ValueError(
            f"documents {p.documents!r} packs one sequence of seq_len == kv_len tokens: not with kv_len"
            f" {p.kv_len} != seq_len {p.seq_len} or mode decode"
        )
    if p.documents != "1" and p.probe.partition(":")[0] not in ("random", *DOCUMENT_PROBES):
        raise ValueError(
            f"documents {p.documents!r} with probe {p.probe!r}: its targets would cross documents; with"
            f" documents use probe {', '.join(DOCUMENT_PROBES)} (targets inside each row's document)"
        )
    if p.latent and not p.kind.reads_cache:
        raise ValueError(f"latent: the values are read from the keys of a KV cache: mode decode only, not {p.mode!r}")
    if p.latent and p.dv > p.head_dim:
        raise ValueError(
            f"latent: the values are the keys' first v_head_dim columns: v_head_dim {p.v_head_dim} exceeds"
            f" head_dim {p.head_dim}"
        )
    if p.v_head_dim and p.probe != "random":
        raise ValueError("v_head_dim: values of their own head dimension are not modelled with probes yet")
    if parse_sinks(p.sinks) and p.kind.reads_cache:
        raise ValueError(
            f"sinks {p.sinks!r} (the first tokens beside a window) is not modelled against a KV cache yet:"
            " use sinks = 'learned' in decode mode, or 'first:K' with modes forward, backward and forward_backward"
        )
