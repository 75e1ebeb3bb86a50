"""Probes: structured inputs whose softmax attention is known, to see where an approximation looks.

On random Gaussian queries and keys softmax attention is nearly uniform, so the distance of an
approximation from it says little about what matters in a trained model: does attention still
find the token that matters — "it" finding "cat" several positions back? A probe plants that
structure. Every key ``j`` carries a random code ``c_j`` (``D`` dimensions, length ``√D``); the
query of row ``i`` points at its *target* keys, ``q_i = λ_i · normalise(Σ_t w_t ĉ_t)``, with the
gain ``λ_i`` solved per row so that full softmax attention puts a chosen share ``mass`` of the
row's weight on its targets. Values are random; the target of every row is known:

* ``retrieval`` — one key at a distance ``d`` drawn log-uniformly over ``1 … p`` (the row's
  position): the "it → cat" case at every distance, giving a retrieval curve;
* ``previous_token`` — the key just before (``d = 1``); ``first_token`` — key 0, the attention
  sink; ``recency`` — the 16 previous keys, weights decaying with distance (``e^{-(d-1)/4}``);
* ``induction`` — a sequence of random tokens with repeats (a vocabulary of ``N/8``); key ``j``
  encodes the token before it, the query encodes its own token, so a row's targets are the keys
  just after earlier occurrences of its token (rows whose token is new have none);
* ``global`` — four keys (at 0, N/4, N/2, 3N/4) every row looks at;
* ``toy`` — the explainer's sentence: every word looks at the word before it, and "it" looks
  at "cat".

``random`` (the default) is the plain seeded standard-normal inputs. A probe is a case field:
``probe = "retrieval"``, or ``"retrieval:mass=0.8"`` to set the share (default 0.9).

The gain is solved with the keys' cross terms taken as Gaussian (``ĉ_t·c_j ~ N(0, 1)``), so the
realised share differs a little from the planned one (by a few per cent at ``D = 64``); the check
measures the realised share on the rows it samples and records it (``probe_mass``).

Layer ``case``: imports nothing of attnbench outside ``attnbench.case``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor
KINDS = ("random", "retrieval", "previous_token", "first_token", "recency", "induction", "global", "toy")
DEFAULT_MASS = 0.9
RECENT = 16
RECENCY_SCALE = 4.0
TOY = ["The", "cat", "sat", "on", "the", "mat", "because", "it", "was", "tired", "and", "hungry", "today"]
TOY_QUERY, TOY_TARGET = TOY.index("it"), TOY.index("cat")


def parse_probe(text: str) -> tuple[str, float]:
    """``(kind, mass)`` of a ``probe`` field; raises ValueError naming what is expected."""
    kind, _, params = text.partition(":")
    if kind not in KINDS:
        raise ValueError(f"probe {text!r}: expected one of {list(KINDS)}, optionally with ':mass=0.9'")
    mass = DEFAULT_MASS
    for item in filter(None, params.split(",")):
        key, _, raw = item.partition("=")
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if key.strip() != "mass" or not 0.0 < value < 1.0:
            raise ValueError(f"probe {text!r}: the one parameter is mass=M with 0 < M < 1")
        mass = value
    return kind, mass


@dataclass(frozen=True)
class Targets:
    """Each query row's target keys: ``index`` ``[Nq, T]`` (-1 pads), their planting weights
    ``weight`` ``[Nq, T]``, and the distance of the (nearest) target ``[Nq]`` (-1: no target)."""

    index: Tensor
    weight: Tensor
    distance: Tensor

    def rows(self) -> Tensor:
        """The rows that have a target."""
        return (self.index >= 0).any(dim=1).nonzero().flatten()


#: The probes whose targets stay inside a packed document (each row's distances counted from its
#: document's first token); the others plant targets at fixed or token-given places.
DOCUMENT_PROBES = ("retrieval", "previous_token", "first_token", "recency")


def targets(kind: str, nq: int, nk: int, seed: int, causal: bool = True, starts: Tensor | None = None) -> Targets:
    """The planted targets of a probe for ``nq`` queries at positions ``nk - nq …`` over ``nk``
    keys (``causal``: only keys at or before a query's position can be targets of ``induction``).
    ``starts`` ``[Nq]``: where each query's packed document begins (None: one sequence, 0); the
    :data:`DOCUMENT_PROBES` keep every target inside it, and ``first_token`` is its first token."""
    p = torch.arange(nq) + (nk - nq)  # [Nq] key position of each query
    start = torch.zeros(nq, dtype=torch.int64) if starts is None else starts.to(torch.int64)  # [Nq]
    if starts is not None and kind not in DOCUMENT_PROBES:
        raise ValueError(f"probe {kind!r} plants targets across documents; with documents use {DOCUMENT_PROBES}")
    span = p - start  # [Nq] keys before each query within its document
    gen = torch.Generator().manual_seed(seed * 31 + 17)
    none = torch.full((nq, 1), -1, dtype=torch.int64)
    if kind == "retrieval":
        u = torch.rand(nq, generator=gen, dtype=torch.float64)
        d = torch.floor(torch.exp(u * torch.log(span.clamp(min=1).double()))).long().clamp(min=1)  # log-uniform 1…span
        d = torch.minimum(d, span)
        index = torch.where(span >= 1, p - d, -1)[:, None]
        return Targets(index, torch.ones(nq, 1), torch.where(span >= 1, d, -1))
    if kind == "previous_token":
        index = torch.where(span >= 1, p - 1, -1)[:, None]
        return Targets(index, torch.ones(nq, 1), torch.where(span >= 1, 1, -1))
    if kind == "first_token":
        index = torch.where(span >= 1, start, -1)[:, None]
        return Targets(index, torch.ones(nq, 1), torch.where(span >= 1, span, -1))
    if kind == "recency":
        d = torch.arange(1, RECENT + 1)[None, :]  # [1, r]
        index = p[:, None] - d  # [Nq, r]
        index = torch.where(index >= start[:, None], index, -1)
        weight = torch.exp(-(d - 1).double() / RECENCY_SCALE).float().expand(nq, -1)
        return Targets(index, weight, torch.where(span >= 1, 1, -1))
    if kind == "global":
        fixed = torch.tensor(sorted({0, nk // 4, nk // 2, 3 * nk // 4}))[None, :]  # [1, g]
        index = torch.where(fixed <= p[:, None], fixed, -1)  # only keys a causal row could see
        return Targets(index, torch.ones(index.shape), (p[:, None] - fixed).clamp(min=0).min(dim=1).values)
    if kind == "induction":
        tokens = induction_tokens(nk, seed).tolist()  # [Nk]
        where: dict[int, list[int]] = {}
        for j, tok in enumerate(tokens):
            where.setdefault(tok, []).append(j)  # each token's positions, ascending
        index = torch.full((nq, 64), -1, dtype=torch.int64)
        distance = torch.full((nq,), -1, dtype=torch.int64)
        for row, pos in enumerate(p.tolist()):
            seen = [j for j in where[tokens[pos]] if (j < pos if causal else j < nk - 1)]
            after = [j + 1 for j in seen][-64:]  # the keys just after earlier (or, non-causal, all) occurrences
            if after:
                index[row, : len(after)] = torch.tensor(after)
                distance[row] = min(abs(pos - a) for a in after)
        return Targets(index, torch.ones(index.shape), distance)
    if kind == "toy":
        index = torch.where(p >= 1, p - 1, -1)
        index[p == TOY_QUERY] = TOY_TARGET
        return Targets(index[:, None], torch.ones(nq, 1), torch.where(index >= 0, p - index, -1))
    return Targets(none, torch.zeros(nq, 1), torch.full((nq,), -1))


def induction_tokens(n: int, seed: int) -> Tensor:
    """A seeded sequence of ``n`` tokens from a vocabulary of ``max(2, n/8)``: plenty of repeats."""
    gen = torch.Generator().manual_seed(seed * 7 + 3)
    return torch.randint(0, max(2, n // 8), (n,), generator=gen)


def gains(share: Tensor, present: Tensor, visible: Tensor, mass: float, head_dim: int) -> Tensor:
    """``[Nq]``: the query gain ``λ`` that puts ``mass`` of a row's softmax weight on its targets.

    ``share`` ``[Nq, T]`` is each target's score per unit of gain (``present`` marks real targets): a query
    ``λ · normalise(Σ_t w_t ĉ_t)`` gives target ``t`` the score ``λ w_t / ||w||`` when the codes
    are nearly orthogonal (``λ`` for every target that carries the query's own code), and each of
    the other visible keys ``λ z / √D`` with ``z ~ N(0, 1)``, whose ``e^s`` averages ``e^{λ²/2D}``.
    The share on the targets, ``Σ_t e^{s_t} / (Σ_t e^{s_t} + (n - T) e^{λ²/2D})``, rises with
    ``λ`` until the background catches up; it is solved by bisection below that turning point."""
    count = present.sum(dim=1)  # [Nq]
    others = (visible - count).clamp(min=0).double()  # [Nq]
    pad = torch.where(present, 0.0, float("-inf")).double()
    high_share = share.double().masked_fill(~present, 0).max(dim=1).values.clamp(min=1e-6)  # [Nq]

    def planted(lam: Tensor) -> Tensor:  # [Nq]
        top = torch.logsumexp(lam[:, None] * share.double() + pad, dim=1)
        background = torch.log(others.clamp(min=1e-300)) + lam**2 / (2 * head_dim)
        return torch.sigmoid(top - background)

    low = torch.zeros(share.shape[0], dtype=torch.float64)
    high = head_dim * high_share  # the share's turning point is near λ = D·share
    for _ in range(60):
        mid = (low + high) / 2
        reached = planted(mid) >= mass
        high = torch.where(reached, mid, high)
        low = torch.where(reached, low, mid)
    return torch.where(count > 0, high, 0.0).float()


def probe_inputs(
    kind: str, mass: float, batch: int, heads: int, kv_heads: int, nq: int, nk: int, head_dim: int,
    visible: Tensor, seed: int, causal: bool = True, starts: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Targets]:  # fmt: skip
    """``q [B, H, Nq, D]``, ``k, v [B, Hkv, Nk, D]`` (float32, CPU) and the targets of a probe;
    ``visible`` ``[Nq]`` is how many keys each row may see under the case's pattern, ``starts``
    where each row's packed document begins (:func:`targets`)."""
    gen = torch.Generator().manual_seed(seed)
    plan = targets(kind, nq, nk, seed, causal, starts)
    codes = torch.randn(batch, kv_heads, nk, head_dim, generator=gen)  # [B, Hkv, Nk, D]
    codes = codes / codes.norm(dim=-1, keepdim=True) * math.sqrt(head_dim)
    if kind == "induction":
        tokens = induction_tokens(nk, seed)
        vocab = torch.randn(batch, kv_heads, int(tokens.max()) + 2, head_dim, generator=gen)
        vocab = vocab / vocab.norm(dim=-1, keepdim=True) * math.sqrt(head_dim)
        before = torch.cat([torch.tensor([int(tokens.max()) + 1]), tokens[:-1]])  # the token before each key
        codes = vocab[:, :, before]  # key j encodes the token before it
    v = torch.randn(batch, kv_heads, nk, head_dim, generator=gen)
    index = plan.index.clamp(min=0)  # [Nq, T]
    weight = plan.weight * (plan.index >= 0)  # [Nq, T]
    if kind == "induction":  # the query encodes its own token (every target carries that code)
        pos = torch.arange(nq) + (nk - nq)
        direction = vocab[:, :, tokens[pos]]  # [B, Hkv, Nq, D]
    else:
        picked = codes[:, :, index]  # [B, Hkv, Nq, T, D]
        direction = (picked * weight[None, None, :, :, None]).sum(dim=3)  # [B, Hkv, Nq, D]
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # [B, Hkv, Nq, D]
    present = (plan.index >= 0).expand(batch, kv_heads, -1, -1)  # [B, Hkv, Nq, T]
    if kind == "induction":  # every target is the query's own code: it scores the full gain
        share = present.float()
    else:  # each target's score per unit of gain, cross terms between target codes included
        share = (codes[:, :, index] @ direction[..., None])[..., 0] / math.sqrt(head_dim)  # [B, Hkv, Nq, T]
    lam = gains(
        share.reshape(-1, share.shape[-1]), present.reshape(-1, share.shape[-1]),
        visible.repeat(batch * kv_heads), mass, head_dim,
    ).view(batch, kv_heads, nq)  # fmt: skip  # [B, Hkv, Nq]
    q = (direction * lam[..., None]).repeat_interleave(heads // kv_heads, dim=1)  # [B, H, Nq, D]
    return q, codes, v, plan
