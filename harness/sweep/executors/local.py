"""Every device of this machine at once: one worker pool per device.

With one device (a machine without GPUs) this is the serial sweep it always was: one worker,
one pair at a time, in the suite's order. With several GPUs, each has a pool (and so a worker
process) of its own and the :class:`~attnbench.sweep.scheduler.DeviceScheduler` keeps them busy side
by side — a case is timed only on its own device, never two at once on one device, and a CPU
case only while nothing else runs.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnbench.measure.devices import present_devices
from attnbench.sweep.scheduler import DeviceScheduler, cpu_is_exclusive
from attnbench.sweep.workers import WorkerPool

if TYPE_CHECKING:
    from attnbench.case.problem import Problem
    from attnbench.measure.records import Record
    from attnbench.sweep.jobs import Planner, Sweep

Pair = tuple["Problem", str]


class LocalExecutor:
    """Runs pairs on this machine's devices, each device through a :class:`WorkerPool` of its own.

    ``pool`` (a pool already holding a live worker, e.g. the one that listed the plugins) serves
    the first device that needs one; ``pool_factory`` makes the others (a test gives fakes)."""

    name = "local"

    def __init__(
        self,
        plugins: list[str],
        pool: WorkerPool | None = None,
        *,
        devices: list[str] | None = None,
        pool_factory: Callable[[str], WorkerPool] | None = None,
        exclusive: Callable[[str], bool] = cpu_is_exclusive,
    ) -> None:
        self.plugins = plugins
        self.log: Path | None = None
        self._spare = pool
        self._factory = pool_factory or (lambda device: WorkerPool(self.plugins, self.log))
        self._devices = list(present_devices()) if devices is None else list(devices)
        self.exclusive = exclusive
        self.pools: dict[str, WorkerPool] = {}
        self._lock = threading.Lock()

    def devices(self) -> list[str]:
        return list(self._devices)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "devices": self.devices()}

    def pool_for(self, device: str) -> WorkerPool:
        """The pool of ``device``, made on first use."""
        with self._lock:
            if device not in self.pools:
                spare, self._spare = self._spare, None
                self.pools[device] = spare or self._factory(device)
                if self.log is not None:
                    self.pools[device].set_log(self.log)
            return self.pools[device]

    def set_log(self, path: Path) -> None:
        with self._lock:
            self.log = path
            for pool in [*self.pools.values(), *([self._spare] if self._spare else [])]:
                pool.set_log(path)

    def prepare(self, runner: Planner, info: dict[str, Any]) -> None:
        runner.calibrate(info, self.pool_for)  # one device at a time, before any case

    def sweep(self, sweep: Sweep) -> None:
        runner, failures, calibration = sweep.runner, sweep.failures, sweep.info["calibration"]

        def execute(pair: Pair) -> Record:
            case, impl = pair
            return runner.run_pair(case, impl, failures, calibration, self.pool_for(case.device))

        scheduler: DeviceScheduler[Pair, Record] = DeviceScheduler(self.exclusive)
        scheduler.run(
            sweep.todo,
            device_of=lambda pair: pair[0].device,
            execute=execute,
            done=lambda pair, record: sweep.emit(pair[0], pair[1], record),
            started=lambda pair: sweep.started(pair[0], pair[1]),
        )

    def close(self) -> None:
        for pool in [*self.pools.values(), *([self._spare] if self._spare else [])]:
            pool.close()
