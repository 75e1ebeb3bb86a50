"""The harness's references of one case, computed once per worker and kept for the next pair.

A worker serves a case's implementations one after another, each on the same seeded inputs, and
the case's float64 reference and its plain computation in the case's dtype
(:mod:`attnbench.measure.verify`) depend only on the case, those inputs, the sampled rows and,
with gradients, the output gradient on the rows. So they are computed for the first pair and
kept: the next pair that asks with the same case gets them back when its tensors are equal,
element for element, to copies of the ones they were computed from (``torch.equal``). Inputs an
implementation changed in place are therefore never judged against another input's reference;
they miss and are computed afresh.

Kept on the CPU only (a GPU case's copies would hold device memory beside the next pair), at
most :data:`MAX_BYTES` of copies and references together and :data:`MAX_ENTRIES` of them (a
decode batch judges each sequence on its own), the least recently used let go first.

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from attnbench.case.problem import Problem

Tensor = torch.Tensor
T = TypeVar("T")

#: The most the memo holds: copies of the inputs and the references computed from them.
MAX_BYTES = 512 * 2**20
#: The most entries it holds (a decode batch of 8 judges 8 sequences).
MAX_ENTRIES = 16

_Key = tuple[str, Problem, tuple[tuple[tuple[int, ...], torch.dtype], ...]]
_held: OrderedDict[_Key, tuple[list[Tensor], Any, int]] = OrderedDict()
stats = {"hits": 0, "misses": 0}


def nbytes(value: object) -> int:
    """Bytes of the tensors in ``value`` (a tensor, a tuple or list of them, or a dataclass)."""
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 0


def remembered(what: str, problem: Problem, tensors: Sequence[Tensor], compute: Callable[[], T]) -> T:
    """``compute()``, or what it returned for ``what`` of ``problem`` on equal ``tensors`` before."""
    if any(t.device.type != "cpu" for t in tensors):
        return compute()
    key: _Key = (what, problem, tuple((tuple(t.shape), t.dtype) for t in tensors))
    found = _held.get(key)
    if found is not None and all(torch.equal(a, b) for a, b in zip(found[0], tensors, strict=True)):
        _held.move_to_end(key)
        stats["hits"] += 1
        value: T = found[1]
        return value
    stats["misses"] += 1
    copies = [t.detach().clone() for t in tensors]  # before the computation, whatever it does
    value = compute()
    size = nbytes(copies) + nbytes(value)
    _held.pop(key, None)
    if size <= MAX_BYTES:
        _held[key] = (copies, value, size)
        while len(_held) > MAX_ENTRIES or sum(e[2] for e in _held.values()) > MAX_BYTES:
            _held.popitem(last=False)
    return value


def forget() -> None:
    """Let every kept reference go."""
    _held.clear()
