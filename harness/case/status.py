"""The statuses a (case, implementation) record can end with, declared once.

Each status carries its meaning, whether it is a failure of the implementation, whether it is a
failure of the implementation's *budget* (after which larger sizes of the same group are
skipped), and its display colours (terminal style, and background/foreground for the HTML
report). Records, progress, report, compare and the report's CSS all read this table.

Layer ``case``: imports nothing of attnbench outside ``attnbench.case``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class StatusInfo:
    meaning: str
    failure: bool  # the implementation failed (compare: leaving ok for this is a regression)
    budget: bool  # it hit the budget at this size: larger sizes of the group are skipped
    terminal: str  # rich style
    background: str  # HTML cell colours
    foreground: str


class Status(StrEnum):
    """A record's status; the string value is what ``results.jsonl`` holds."""

    OK = "ok"
    INACCURATE = "inaccurate"
    UNCHECKED = "unchecked"
    ERROR = "error"
    TIMEOUT = "timeout"
    CRASHED = "crashed"
    OOM = "oom"
    UNSUPPORTED = "unsupported"
    UNAVAILABLE = "unavailable"
    SKIPPED = "skipped"

    @property
    def info(self) -> StatusInfo:
        return _INFO[self]

    @property
    def meaning(self) -> str:
        return self.info.meaning

    @property
    def failure(self) -> bool:
        return self.info.failure

    @property
    def budget(self) -> bool:
        return self.info.budget


_INFO: dict[Status, StatusInfo] = {
    Status.OK: StatusInfo("ran and passed the accuracy check", False, False, "green", "#d8f0dc", "#1d5b2a"),
    Status.INACCURATE: StatusInfo(
        "ran, but its output is outside the accuracy bound; its time is not shown anywhere",
        True,
        False,
        "magenta",
        "#ffe2b8",
        "#7a4100",
    ),
    Status.UNCHECKED: StatusInfo(
        "ran, but its accuracy could not be checked (the reference failed); never ranked, its time not shown"
        " as a speedup",
        False,
        False,
        "bright_magenta",
        "#fff3c4",
        "#6b5300",
    ),
    Status.ERROR: StatusInfo("raised an exception", True, False, "red", "#f8c9c9", "#7a0f0f"),
    Status.TIMEOUT: StatusInfo("ran past the time budget and was stopped", True, True, "yellow", "#e3d4f5", "#4a2479"),
    Status.CRASHED: StatusInfo("its worker process died (a signal or an abort)", True, True, "red", "#c0392b", "#fff"),
    Status.OOM: StatusInfo(
        "ran out of memory (or declared a footprint over the budget and was not started)",
        True,
        True,
        "yellow",
        "#f7d0e6",
        "#7a1650",
    ),
    Status.UNSUPPORTED: StatusInfo(
        "declares it cannot compute this case (dtype, device or feature)", False, False, "dim", "#eceef1", "#555"
    ),
    Status.UNAVAILABLE: StatusInfo(
        "cannot run on this machine (library or device missing)", False, False, "dim", "#dde1e6", "#444"
    ),
    Status.SKIPPED: StatusInfo(
        "not run, because it failed its budget at a smaller size", False, False, "dim", "#f7f7f7", "#888"
    ),
}

#: Every status, in display order.
STATUSES: tuple[str, ...] = tuple(s.value for s in Status)
#: Statuses that mean the implementation failed its budget at this size (``scaling`` stops there).
BUDGET_FAILURES: frozenset[str] = frozenset(s.value for s in Status if s.budget)
#: Statuses that are failures of the implementation (compare: leaving ok for one is a regression).
FAILURES: frozenset[str] = frozenset(s.value for s in Status if s.failure)


def status_css() -> str:
    """The report's CSS rules for status cells, one per status."""
    return "\n".join(
        f"  .st-{s.value} {{ background: {s.info.background}; color: {s.info.foreground}; }}" for s in Status
    )
