"""Packed variable-length batches: several documents in one sequence, each attending only within
itself.

Training and prefill batch real data by packing documents of different lengths into one
sequence (FlashAttention's ``cu_seqlens``, xformers' ``BlockDiagonalMask``, flex's document
masks): attention is block-diagonal, and causal within each document when the case is causal.
A case's ``documents`` field says how its ``seq_len`` tokens are cut:

* ``"1"``: one sequence, no cut;
* ``"uniform:K"``: ``K`` documents, the ``K − 1`` cuts drawn uniformly (lengths of one order);
* ``"longtail:K"``: lengths in proportion to ``e^(1.5·z)`` for standard normal ``z`` (log-normal:
  one or two documents hold most tokens, the rest are short, as in web text);
* ``"bimodal:K"``: half the documents eight times as long as the other half, in seeded order.

Lengths are seeded from the case's seed, at least one token each, and sum to the sequence. The
pattern (:mod:`attnbench.case.patterns`) holds the cuts, so the reference, the FLOP counter and
every mask built from the pattern compute only the documents' pairs.

Layer ``case``: imports nothing of attnbench outside ``attnbench.case``.
"""

from __future__ import annotations

import itertools

import torch

#: The length distributions a packed batch can be drawn from.
DISTRIBUTIONS = ("uniform", "longtail", "bimodal")
#: The log-normal spread of ``longtail`` lengths, and how much longer ``bimodal``'s long half is.
LONGTAIL_SIGMA = 1.5
BIMODAL_RATIO = 8.0


def parse_documents(spec: str) -> tuple[str, int]:
    """``"1"`` → ``("one", 1)``; ``"longtail:8"`` → ``("longtail", 8)``; a ValueError otherwise."""
    if spec == "1":
        return "one", 1
    kind, _, count = spec.partition(":")
    if kind not in DISTRIBUTIONS or not count.isdigit() or int(count) < 1:
        raise ValueError(
            f"documents {spec!r}: expected '1' or DIST:K with DIST one of {list(DISTRIBUTIONS)} and K >= 1"
            " (e.g. 'longtail:8')"
        )
    return kind, int(count)


def document_lengths(spec: str, n: int, seed: int) -> list[int]:
    """The lengths of the documents ``spec`` packs into ``n`` tokens (see the module)."""
    kind, count = parse_documents(spec)
    if count > n:
        raise ValueError(f"documents {spec!r}: {count} documents do not fit in {n} tokens (seq_len)")
    if count == 1:
        return [n]
    gen = torch.Generator().manual_seed(seed * 1_000_033 + 7)
    if kind == "uniform":
        cuts = (torch.randperm(n - 1, generator=gen)[: count - 1] + 1).sort().values.tolist()
        return [b - a for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    if kind == "longtail":
        weights = torch.exp(LONGTAIL_SIGMA * torch.randn(count, generator=gen, dtype=torch.float64))
    else:
        weights = torch.ones(count, dtype=torch.float64)
        weights[torch.randperm(count, generator=gen)[: count // 2]] = BIMODAL_RATIO
    return _apportion(weights, n)


def _apportion(weights: torch.Tensor, n: int) -> list[int]:
    """Integer lengths in proportion to ``weights``, each at least 1, summing to ``n``."""
    spare = n - len(weights)
    shares = weights / weights.sum() * spare
    lengths = shares.floor().to(torch.int64)
    left = spare - int(lengths.sum())
    order = (shares - lengths).argsort(descending=True)[:left]  # the largest remainders
    lengths[order] += 1
    return [int(x) + 1 for x in lengths]


def document_cuts(spec: str, n: int, seed: int) -> tuple[int, ...]:
    """Where each document after the first starts (sorted token positions in ``(0, n)``)."""
    return tuple(itertools.accumulate(document_lengths(spec, n, seed)[:-1]))
