"""Executors: where a sweep's pairs run, while the runner alone writes their records.

The runner (:mod:`attnbench.sweep.runner`) decides what it can without a worker, keeps the folder
and writes every record the moment it exists; an executor only decides *where and when* each
remaining pair runs and hands its record back:

* :class:`~attnbench.sweep.executors.local.LocalExecutor` (the default): every device of this machine
  at once, one worker pool per device, never two timed cases on one device and a CPU case
  always alone (:mod:`attnbench.sweep.scheduler`);
* :class:`~attnbench.sweep.executors.ray_driver.RayExecutor` (``--executor ray``): each pair a Ray
  task that reserves a whole device of some node of a cluster and runs the same isolated
  worker there (:mod:`attnbench.sweep.executors.ray_task`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from attnbench.case.problem import Problem
    from attnbench.measure.records import Record
    from attnbench.sweep.runner import Failures, Runner

EXECUTORS = ("local", "ray")


class ExecutorError(Exception):
    """An executor that cannot start (Ray not installed, no cluster at the address): one sentence."""


@dataclass
class Sweep:
    """What an executor is given to run: the runner (whose :meth:`~attnbench.sweep.runner.Runner.decide`,
    :meth:`~attnbench.sweep.runner.Runner.job` and :meth:`~attnbench.sweep.runner.Runner.run_pair` make the
    records), the pairs still to run in the suite's order, what failed so far, ``run.json`` as a
    dict, and three callbacks for the runner's thread: ``emit`` a record (written at once),
    ``started`` a pair, ``save_info`` after changing ``info``."""

    runner: Runner
    todo: list[tuple[Problem, str]]
    failures: Failures
    info: dict[str, Any]
    emit: Callable[[Problem, str, Record], None]
    started: Callable[[Problem, str], None]
    save_info: Callable[[], None]


class Executor(Protocol):
    """Runs the pairs of a sweep somewhere."""

    name: str

    def devices(self) -> list[str]:
        """The devices pairs may run on (what ``auto`` and ``cuda:all`` expand to)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What ``run.json`` keeps of it (its name, the cluster's nodes)."""
        ...

    def set_log(self, path: Path) -> None:
        """Workers started here write their output to ``path``."""
        ...

    def prepare(self, runner: Runner, info: dict[str, Any]) -> None:
        """Work before the first pair (the calibration, where it is measured up front)."""
        ...

    def sweep(self, sweep: Sweep) -> None:
        """Run every pair of ``sweep.todo``, emitting each one's record on the calling thread."""
        ...

    def close(self) -> None:
        """Stop everything still running (also from a signal handler)."""
        ...


def create(name: str, *, address: str | None = None) -> Executor | None:
    """The executor called ``name`` (None: the runner's default, the local one)."""
    if name == "local":
        if address:
            raise ExecutorError("--address is the address of a Ray cluster: give it with --executor ray")
        return None
    if name == "ray":
        from attnbench.sweep.executors.ray_driver import RayExecutor

        return RayExecutor(address)
    raise ExecutorError(f"--executor {name}: expected one of {', '.join(EXECUTORS)}")
