"""Shards: the I-th of N disjoint parts of a suite's pairs, for any batch scheduler.

``attnbench run SUITE --shard I/N`` runs one part into a folder of its own; ``attnbench merge``
(:mod:`attnbench.sweep.merge`) joins the parts back into one result folder. Every shard computes the
same split from the same list of pairs, so N jobs that never talk to each other (a Slurm array,
a CI matrix) each run exactly their own part and together run every pair once.

The split keeps all sizes of one case group together (the group of
:meth:`attnbench.sweep.jobs.Failures.group`: one implementation, every case field but the lengths),
so that stop-on-failure still skips the larger sizes after a budget failure. Groups are
balanced by their predicted cost (:func:`attnbench.sweep.estimate.pair_seconds`) — greedy,
longest first, each into the bin with the least work so far — which is deterministic: the same
pairs always give the same shards.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from attnbench.case.problem import Problem
from attnbench.sweep.estimate import pair_seconds

Pair = tuple[Problem, str]


@dataclass(frozen=True)
class Shard:
    """Part ``index`` (from 1) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def as_dict(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count}

    @classmethod
    def from_dict(cls, value: Any) -> Shard | None:
        """The shard a ``run.json`` records (None: the whole suite)."""
        if not isinstance(value, Mapping):
            return None
        return cls(int(value["index"]), int(value["count"]))

    def select(self, pairs: Sequence[Pair], budget: Mapping[str, float]) -> list[Pair]:
        """This shard's pairs, in the suite's order."""
        return split(pairs, self.count, budget)[self.index - 1]


def parse_shard(text: str) -> Shard:
    """``"I/N"`` with ``1 <= I <= N``; anything else is a :class:`ValueError` with one sentence."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f"--shard {text}: expected I/N with 1 <= I <= N, e.g. --shard 1/8")
    return Shard(int(match[1]), int(match[2]))


def group_of(case: Problem, impl: str) -> tuple[Any, ...]:
    """The case group a pair belongs to: all its sizes run in one shard, in order."""
    from attnbench.sweep.jobs import Failures

    return Failures.group({"impl": impl, **case.fields()})


def split(pairs: Sequence[Pair], count: int, budget: Mapping[str, float]) -> list[list[Pair]]:
    """``pairs`` in ``count`` disjoint parts of about equal predicted cost, each in the suite's
    order; a case group is never divided."""
    parts: list[list[Pair]] = [[] for _ in range(count)]
    for pair, part in zip(pairs, assign(pairs, count, budget), strict=True):
        parts[part].append(pair)
    return parts


def assign(pairs: Sequence[Pair], count: int, budget: Mapping[str, float]) -> list[int]:
    """The part (from 0) of each pair: groups, longest first, each into the least loaded part."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, (case, impl) in enumerate(pairs):
        groups.setdefault(group_of(case, impl), []).append(i)
    cost = {key: sum(pair_seconds(pairs[i][0], budget) for i in members) for key, members in groups.items()}
    order = sorted(groups, key=lambda key: (-cost[key], groups[key][0]))  # longest first, then suite order
    loads = [0.0] * count
    owner: dict[int, int] = {}
    for key in order:
        part = min(range(count), key=lambda b: (loads[b], b))
        loads[part] += cost[key]
        for i in groups[key]:
            owner[i] = part
    return [owner[i] for i in range(len(pairs))]


def plan(pairs: Sequence[Pair], count: int, budget: Mapping[str, float]) -> list[dict[str, Any]]:
    """Every pair of the suite, in its order, and the shard (from 1) that runs it, as ``run.json`` keeps them:
    :mod:`attnbench.sweep.merge` reads it to name the pairs that no merged shard recorded."""
    parts = assign(pairs, count, budget)
    return [{"shard": part + 1, "impl": impl, **case.fields()} for (case, impl), part in zip(pairs, parts, strict=True)]
