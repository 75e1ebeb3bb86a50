"""Progress of a sweep: a live bar on a terminal, one plain line per record elsewhere.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column

from attnbench.case.status import Status
from attnbench.sweep.estimate import duration

STATUS_STYLE = {s.value: s.info.terminal for s in Status}


def _column(width: int) -> Column:
    return Column(no_wrap=True, overflow="ellipsis", max_width=max(4, width), min_width=min(4, width))


class SweepProgress:
    """Shows the case and implementation in flight, counts by status and the time left."""

    def __init__(self, total: int, done: int = 0, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self.total = total
        self.counts: Counter[str] = Counter()
        self.done = done
        self.started = time.monotonic()
        self._progress: Progress | None = None
        self.left_s: float | None = None  # the forecast's time left (:class:`attnbench.sweep.estimate.Forecast`)
        if self.live:
            # The bar, the counts and the times keep their room at any width; the pair in flight
            # and the counts by status are cut short (with an ellipsis) to fit what is left.
            width = self.console.width
            narrow = width < 100
            fixed = (12 if narrow else 30) + 2 * len(str(total)) + 1 + 8 + 5 + 8 + 6  # bar, M/N, times, gaps
            spare = max(10, width - fixed)
            self._progress = Progress(
                TextColumn("[bold]{task.fields[current]}", table_column=_column(spare * 3 // 5)),
                BarColumn(bar_width=12 if narrow else 30),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}", table_column=_column(spare - spare * 3 // 5)),
                TimeElapsedColumn(),
                TextColumn("{task.fields[left]}"),
                console=self.console,
                transient=False,
            )
            self._task = self._progress.add_task("sweep", total=total, completed=done, current="", counts="", left="")

    def __enter__(self) -> SweepProgress:
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress:
            self._progress.stop()

    def _counts_text(self, markup: bool) -> str:
        parts = []
        for status, n in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            parts.append(f"[{STATUS_STYLE.get(status, '')}]{status} {n}[/]" if markup else f"{status} {n}")
        return " ".join(parts)

    def start(self, label: str, impl: str) -> None:
        if self._progress:
            self._progress.update(self._task, current=f"{impl} · {label}")

    def finish(self, label: str, record: dict[str, Any]) -> None:
        self.done += 1
        self.counts[record["status"]] += 1
        left = f"~{duration(self.left_s)} left" if self.left_s is not None and self.done < self.total else ""
        if self._progress:
            self._progress.update(self._task, completed=self.done, counts=self._counts_text(True), left=left)
            return
        time_ms = record.get("time_ms")
        figure = f"{time_ms:9.3f} ms" if isinstance(time_ms, int | float) else " " * 12
        note = "" if record["status"] == Status.OK else f"  {str(record.get('reason', ''))[:100]}"
        line = f"[{self.done}/{self.total}] {record['status']:<11} {record['impl']:<16} {figure}  {label}{note}"
        line += f"  ({left})" if left else ""
        print(line, file=sys.stderr, flush=True)

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        return f"{self.done}/{self.total} pairs in {elapsed:.0f} s: {self._counts_text(False)}"
