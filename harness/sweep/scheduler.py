"""Every device of one machine at once, without two timed cases sharing a device.

Jobs wait in one queue per device, in the order given, and each device runs one job at a time
on a thread of its own (the job itself talks to that device's worker process). Devices run
concurrently, except an *exclusive* device — the CPU, whose cases would be timed on the cores
that every other worker also uses: an exclusive job starts only when nothing else runs, and
nothing else starts while it runs. Shared devices (GPUs) go first, since an exclusive job has
to wait for all of them anyway; an exclusive device's jobs then run one by one.

Because a device runs its jobs one after another in the order given, the smaller sizes of a
case group have finished (and their records are known) before a larger size starts, and
stop-on-failure works as in a serial sweep. Results come back to the thread that called
:meth:`DeviceScheduler.run`, one by one, so that one writer alone writes the records.

The scheduler knows nothing of cases, workers or records: it takes the list of jobs, the device
of each and a function that runs one, so a test can drive it with fake devices and fake jobs.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")

#: How often the calling thread wakes while it waits (so that signals reach it promptly).
POLL_S = 0.5


def cpu_is_exclusive(device: str) -> bool:
    """The CPU's cases run alone; GPU (and MPS) cases may run beside each other's."""
    return device == "cpu"


class _Failed:
    """An exception raised by a job's function, carried back to the calling thread."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class DeviceScheduler(Generic[J, R]):
    """Runs jobs on their devices: one at a time per device, exclusive devices alone."""

    def __init__(self, exclusive: Callable[[str], bool] = cpu_is_exclusive) -> None:
        self.exclusive = exclusive

    def run(
        self,
        jobs: Sequence[J],
        device_of: Callable[[J], str],
        execute: Callable[[J], R],
        done: Callable[[J, R], None],
        started: Callable[[J], None] | None = None,
    ) -> None:
        """Run every job: ``execute(job)`` on its device's thread, then ``done(job, result)``
        (and ``started(job)`` as it is sent) on the calling thread. An exception from
        ``execute`` stops the run and is raised here."""
        waiting: dict[str, deque[J]] = {}
        for job in jobs:
            waiting.setdefault(device_of(job), deque()).append(job)
        inboxes: dict[str, queue.Queue[tuple[J] | None]] = {}
        results: queue.Queue[tuple[str, J, R | _Failed]] = queue.Queue()
        running: dict[str, J] = {}

        def serve(device: str, inbox: queue.Queue[tuple[J] | None]) -> None:
            while (item := inbox.get()) is not None:
                (job,) = item
                try:
                    outcome: R | _Failed = execute(job)
                except BaseException as exc:  # carried to the caller, raised there
                    outcome = _Failed(exc)
                results.put((device, job, outcome))

        def send(device: str) -> None:
            job = waiting[device].popleft()
            if device not in inboxes:
                inboxes[device] = queue.Queue()
                name = f"attnbench-device-{device}"
                threading.Thread(target=serve, args=(device, inboxes[device]), name=name, daemon=True).start()
            running[device] = job
            if started is not None:
                started(job)
            inboxes[device].put((job,))

        def dispatch() -> None:
            if any(self.exclusive(d) for d in running):
                return
            shared = [d for d, q in waiting.items() if q and not self.exclusive(d)]
            for device in shared:
                if device not in running:
                    send(device)
            if not running and not shared:
                first = next((d for d, q in waiting.items() if q), None)
                if first is not None:
                    send(first)

        try:
            while running or any(waiting.values()):
                dispatch()
                try:
                    device, job, outcome = results.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                del running[device]
                if isinstance(outcome, _Failed):
                    raise outcome.exc
                done(job, outcome)
        finally:
            for inbox in inboxes.values():
                inbox.put(None)
