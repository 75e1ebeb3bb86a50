"""How a case field is declared: the metadata that every other part of attnbench reads.

Each field of :class:`attnbench.case.problem.Problem` is declared once with :func:`case_field`: its
default, its suite-grid default, how each value is validated and what is expected, how it is
written in labels, and whether it identifies a case group. Suite parsing, grid expansion, record
keys, progress labels, report groups and compare's case names are all derived from that
metadata (:mod:`attnbench.case.keys`), so adding a field is one declaration plus its use.

Layer ``case``: imports nothing of attnbench outside ``attnbench.case``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: ``short(value, case) -> str | None``: the field in a label, or None to leave it out.
Short = Callable[[Any, dict[str, Any]], str | None]


@dataclass(frozen=True)
class CaseField:
    """The metadata of one case field."""

    kind: type
    grid: list[Any] | None  # the suite grid's default; None: the axis is required
    expected: str  # what a valid value is, for error messages ("integers >= 1")
    check: Callable[[Any], bool] | None = None
    short: Short | None = None
    order: int = 100  # position in a case label
    group: bool = True  # part of a case group's identity (not the swept length, not threads)
    auto: tuple[str, ...] = ()  # grid words expanded on the machine ("auto", "cuda:all")
    empty_ok: bool = False  # an empty grid list means "derived" (kv_heads, kv_len)
    description: str = ""

    def takes(self, item: Any) -> bool:
        """Whether a value (from TOML or JSON) is of the field's kind: a float field takes integers
        (``softcap = [50]``), an integer field never takes a boolean."""
        if isinstance(item, bool):
            return self.kind is bool
        if self.kind is float:
            return isinstance(item, int | float)
        return isinstance(item, self.kind)


def case_field(default: Any, meta: CaseField) -> Any:
    """A dataclass field carrying its :class:`CaseField` metadata."""
    return field(default=default, metadata={"case": meta})


def at_least(low: int) -> Callable[[Any], bool]:
    return lambda x: x >= low


def between(low: int, high: int) -> Callable[[Any], bool]:
    return lambda x: low <= x <= high


def one_of(values: Any) -> Callable[[Any], bool]:
    return lambda x: x in values


def parses(parse: Callable[[Any], object]) -> Callable[[Any], bool]:
    """A field check: whether ``parse`` takes the value without a ValueError."""

    def ok(value: Any) -> bool:
        try:
            parse(value)
        except ValueError:
            return False
        return True

    return ok


def short_label(row: dict[str, Any], spec: dict[str, CaseField], value: Callable[[dict[str, Any], str], Any]) -> str:
    """Every field's short form, in its order: ``forward fp32 cpu B1 H32/8 N1x4096 D128 causal t0``
    (``value(row, key)`` reads a field, with its default where the row lacks it)."""
    parts = (
        meta.short(value(row, key), row) for key, meta in sorted(spec.items(), key=lambda kv: kv[1].order) if meta.short
    )
    return " ".join(part for part in parts if part)
