"""Devices by name, declared once: the kinds a case can run on and how their names are written.

``cpu``, ``cuda`` (GPU 0), ``cuda:N`` and ``mps``; records and suites hold the canonical name
(``cuda`` becomes ``cuda:0``). What a device *does* — its clock, threads, peak memory, whether
it is present — is the measurement's (:mod:`attnbench.measure.devices`).

Layer ``case``: imports nothing of attnbench outside ``attnbench.case``.
"""

from __future__ import annotations

KINDS = ("cpu", "cuda", "mps")


def parse_device(name: str) -> tuple[str, int | None]:
    """``(kind, index)`` of a device name; an unknown or malformed name raises ValueError."""
    kind, _, index = str(name).partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown device {name!r}; expected one of cpu, cuda, cuda:N, mps")
    if kind in ("cpu", "mps"):
        if index:
            raise ValueError(f"device {name!r}: the {kind.upper()} takes no index")
        return kind, None
    if index and not index.isdigit():
        raise ValueError(f"device {name!r}: expected cuda:N with N a GPU number")
    return kind, int(index) if index else 0


def canonical(name: str) -> str:
    """The name records hold: ``cuda`` becomes ``cuda:0``."""
    kind, index = parse_device(name)
    return kind if index is None else f"{kind}:{index}"


def device_kind(name: str) -> str:
    """``cpu``, ``cuda`` or ``mps``."""
    return parse_device(name)[0]
