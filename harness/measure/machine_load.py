"""How busy the rest of the machine was while a case was timed.

A run timed beside other work is slower, and not evenly: on this project's two-core machines, a
call on two threads beside two spinning processes ran 3.12× slower while the baseline
interleaved with it ran 1.41× slower, so neither the absolute time nor the ratio against a
reference timed beside it tells a regression from the load. What can be measured is the load
itself: over the timing, the CPU time every process used on the cores this worker may run on
(Linux ``/proc/stat``, with the hypervisor's steal) minus the CPU time of the worker itself
(``getrusage``), as a share of those cores' time. On a quiet machine it stays near zero (the
runner waiting on its pipe); beside two spinning processes on two cores it reads about one half.
:mod:`attnbench.results.compare` calls no pair slower or faster when either run was loaded.

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

STAT = Path("/proc/stat")
#: Fields of a ``cpuN`` line of ``/proc/stat`` that are busy time: user, nice, system, irq,
#: softirq, steal (guest time is already inside user).
_BUSY = (0, 1, 2, 5, 6, 7)


def _busy_ticks(cpus: set[int]) -> int | None:
    try:
        text = STAT.read_text()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *values = line.split()
        if int(name[3:]) in cpus:
            numbers = [int(v) for v in values]
            total += sum(numbers[i] for i in _BUSY if i < len(numbers))
    return total


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LoadMeter:
    """``start()``, then ``stop()`` returns the share of the usable cores' time that other
    processes took in between (0: the machine was this worker's alone), or None where the
    platform does not say."""

    def __init__(self) -> None:
        self.cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start: tuple[float, int, float] | None = None

    def start(self) -> None:
        busy = _busy_ticks(self.cpus)
        self._start = None if busy is None else (time.monotonic(), busy, _own_cpu_s())

    def stop(self) -> float | None:
        if self._start is None or not self.cpus:
            return None
        busy = _busy_ticks(self.cpus)
        if busy is None:
            return None
        wall = time.monotonic() - self._start[0]
        if wall <= 0:
            return None
        others = (busy - self._start[1]) / self.hz - (_own_cpu_s() - self._start[2])
        return min(1.0, max(0.0, others / (wall * len(self.cpus))))
