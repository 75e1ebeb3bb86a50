"""Executors: where a sweep's pairs run, while the runner alone writes their records.

The runner (:mod:`attnbench.sweep.runner`) decides what it can without a worker, keeps the folder
and writes every record the moment it exists; an executor only decides *where and when* each
remaining pair runs and hands its record back, through the interface both import from
:mod:`attnbench.sweep.jobs` (an executor never imports the runner):

* :class:`~attnbench.sweep.executors.local.LocalExecutor` (the default): every device of this machine
  at once, one worker pool per device, never two timed cases on one device and a CPU case
  always alone (:mod:`attnbench.sweep.scheduler`);
* :class:`~attnbench.sweep.executors.ray_driver.RayExecutor` (``--executor ray``): each pair a Ray
  task that reserves a whole device of some node of a cluster and runs the same isolated
  worker there (:mod:`attnbench.sweep.executors.ray_task`).

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

from attnbench.sweep.jobs import Executor, ExecutorError, Sweep

__all__ = ["EXECUTORS", "Executor", "ExecutorError", "Sweep", "create"]
EXECUTORS = ("local", "ray")


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
