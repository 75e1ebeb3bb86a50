"""Everything derived from the case declaration in :class:`attnbench.case.problem.Problem`.

Record keys, the suite grid's axes and defaults, case labels, case groups and their labels are
read from the fields' :class:`~attnbench.case.fields.CaseField` metadata, never listed again.

Layer ``case``: imports nothing of attnbench outside ``attnbench.case``.
"""

from __future__ import annotations

from dataclasses import MISSING
from dataclasses import fields as dataclass_fields
from typing import Any

from attnbench.case.fields import CaseField, short_label
from attnbench.case.problem import SHORT_DTYPE, Problem

#: Every case field and its metadata, in declaration order.
SPEC: dict[str, CaseField] = {f.name: f.metadata["case"] for f in dataclass_fields(Problem) if "case" in f.metadata}
#: The fields that identify a case (with ``impl``, a record's key).
CASE_KEYS: tuple[str, ...] = tuple(SPEC)
#: Each field's value when a record does not hold it (written before the field existed).
DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclass_fields(Problem) if f.name in SPEC and f.default is not MISSING
}
#: The fields that hold a case group fixed; ``kv_rel`` (added by the report) says how the key
#: length relates to the swept one.
GROUP_KEYS: tuple[str, ...] = (*(k for k, m in SPEC.items() if m.group), "kv_rel")
#: Group fields written in the usual parts of a group label (the rest are appended).
_PATTERN = ("causal", "window", "layout")
_SHAPE = ("batch", "heads", "head_dim")


def value(row: dict[str, Any], key: str) -> Any:
    """A case field of a record or case dict (its default where the record predates the field)."""
    return row.get(key, DEFAULTS.get(key))


def record_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """The identity of a (case, implementation) pair in a record or case dict."""
    return (row["impl"], *(value(row, k) for k in CASE_KEYS))


def _short(key: str, row: dict[str, Any]) -> str | None:
    meta = SPEC[key]
    return None if meta.short is None else meta.short(value(row, key), row)


def case_label(row: dict[str, Any]) -> str:
    """``forward fp32 cpu B1 H32/8 N1x4096 D128 causal t0``: every field's short form, in order."""
    return short_label(row, SPEC, value)


def pattern_label(row: dict[str, Any]) -> str:
    """``causal+window 256+bigbird``, or ``full``."""
    bits = []
    if truthy(value(row, "causal")):
        bits.append("causal")
    if value(row, "window"):
        bits.append(f"window {value(row, 'window')}")
    layout = str(value(row, "layout") or "dense")
    if layout != "dense":
        bits.append(layout.split(":")[0])
    return "+".join(bits) if bits else "full"


def group_label(row: dict[str, Any]) -> str:
    """A short description of a case group, e.g. ``forward · fp32 · cpu · B1 H8 D64 · full``,
    followed by any other group field that is not at its default."""
    heads = value(row, "heads")
    kv = value(row, "kv_heads") or heads
    shape = f"B{value(row, 'batch')} {f'H{heads}' if kv == heads else f'H{heads}/{kv}kv'} D{value(row, 'head_dim')}"
    parts = [
        str(value(row, "mode")),
        SHORT_DTYPE.get(str(value(row, "dtype")), str(value(row, "dtype"))),
        str(value(row, "device")),
        shape,
        pattern_label(row),
    ]
    for key, meta in SPEC.items():
        known = key in ("mode", "dtype", "device", "kv_heads", *_SHAPE, *_PATTERN)
        if meta.group and not known and value(row, key) != DEFAULTS.get(key) and (part := _short(key, row)):
            parts.append(part)
    if row.get("kv_rel", "self") != "self":
        parts.append(str(row["kv_rel"]))
    return " · ".join(parts)


def varying_label(row: dict[str, Any], varying: list[str]) -> str:
    """A case named by the fields that vary among those shown together, the length first."""
    parts = [f"N={row['seq_len']}"]
    for key in varying:
        if key == "seq_len" or (key == "kv_len" and row[key] == row["seq_len"]):
            continue
        if key == "kv_heads" and row[key] == row["heads"]:
            continue
        if key == "kv_len":
            parts.append(f"Nk={row[key]}")
        elif key == "kv_heads":
            parts.append(f"Hkv={row[key]}")
        elif key == "causal":
            parts.append("causal" if truthy(row[key]) else "full")
        elif key == "window" and not row[key]:
            parts.append("no window")
        elif key in SPEC and (part := _short(key, row)):
            parts.append(part)
    return " ".join(parts)


def as_text(x: Any) -> str:
    """A case value as text, alike whether it comes from a record (JSON) or from a report's frame
    (numpy scalars, integral floats): ``2048``, never ``2048.0``."""
    item = getattr(x, "item", None)
    x = item() if callable(item) else x  # numpy scalars
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    return str(x)


def truthy(x: Any) -> bool:
    return bool(x) and str(x).lower() not in ("false", "0", "none", "nan")


def problem_of(case: dict[str, Any]) -> Problem:
    """The problem a case dict (a job's ``case``, a record) describes, with its seed."""
    fields = {key: case[key] for key in CASE_KEYS if key in case}
    return Problem(**fields, seed=int(case.get("seed", 0)))
