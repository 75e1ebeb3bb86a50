"""``--executor ray``: each pair a Ray task that reserves a whole device of some node.

Ray does the scheduling, the placement and the transfer of results; this driver only submits
tasks and waits on them (``ray.wait``), in one order constraint of attnbench's own: the sizes
of one case group run one after another, smallest first, so that a size is submitted only once
the smaller ones have records and stop-on-failure can skip it. Different groups are all in
flight at once, as far as the cluster's devices allow.

What a task reserves:

* a CUDA case: one GPU (``num_gpus=1``, and Ray's default of one CPU beside it);
* a CPU case: every CPU of a node (as many as the largest node has, so that it runs alone
  there: no other task, GPU tasks included, holds a CPU of that node while it is timed) — or,
  where the cluster's nodes were started with ``--resources='{"attnbench_node": 1}'``, the whole
  of that resource, of which a GPU task takes a sliver, so that the rule holds on nodes of
  any size.

Each task runs the pair in the same isolated worker process as a local run
(:mod:`attnbench.sweep.executors.ray_task`), so crash, timeout and out-of-memory end as the same
statuses. A task whose Ray worker itself dies (killed, its node lost) is recorded ``crashed``
as a killed worker is locally, and is not retried: Ray's retries would run the pair again and
hide the death (``max_retries=0``). Records come back as the tasks' return values and the
runner writes each one as it arrives, so ``--resume`` works as it does locally.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnbench.case.status import Status
from attnbench.measure.devices import device
from attnbench.measure.records import Record
from attnbench.sweep.jobs import ExecutorError

if TYPE_CHECKING:
    from attnbench.case.problem import Problem
    from attnbench.sweep.jobs import Planner, Sweep

#: A custom resource that, where every node has one, lets a CPU case reserve its node exactly.
NODE_RESOURCE = "attnbench_node"
#: The part of it a GPU task holds, so that a CPU case waits for the node's GPU tasks.
GPU_SHARE = 0.001
POLL_S = 1.0
INSTALL_HINT = '--executor ray needs Ray, which is not installed here: pip install "attnbench[ray]"'


def task_options(nodes: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Ray options of a CPU case's task and of a GPU case's task on a cluster of ``nodes``
    (``ray.nodes()``'s entries)."""
    resources = [n.get("Resources") or {} for n in nodes if n.get("Alive", True)]
    if resources and all(r.get(NODE_RESOURCE) for r in resources if r.get("CPU")):
        whole, sliver = {NODE_RESOURCE: 1.0}, {NODE_RESOURCE: GPU_SHARE}
        return {"num_cpus": 1, "resources": whole}, {"num_gpus": 1, "resources": sliver}
    cpus = max((int(r.get("CPU", 0)) for r in resources), default=1)
    return {"num_cpus": max(1, cpus)}, {"num_gpus": 1}


def cluster_devices(nodes: list[dict[str, Any]]) -> list[str]:
    """``cpu`` and ``cuda:0 … cuda:G-1``, G the most GPUs of one node: under Ray, ``cuda:N``
    names a case, and the GPU that runs it is whichever one Ray reserves (its record says which)."""
    gpus = max((int((n.get("Resources") or {}).get("GPU", 0)) for n in nodes if n.get("Alive", True)), default=0)
    return ["cpu", *(f"cuda:{i}" for i in range(gpus))]


class RayExecutor:
    """Pairs as Ray tasks on the cluster at ``address`` (None: a cluster of this machine alone,
    or the one ``RAY_ADDRESS`` names; ``auto``: the one running here)."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ExecutorError(INSTALL_HINT) from None
        self.address = address
        self._owns_ray = not ray.is_initialized()  # a Ray this process already joined is left as it is
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": "warning"}
        if address is None and not os.environ.get("RAY_ADDRESS"):
            options["include_dashboard"] = False  # a Ray of this machine alone, started here
        try:
            if self._owns_ray:
                ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ExecutorError(
                f"no Ray cluster could be reached at {address or 'this machine'}: {_first_line(exc)}"
            ) from None
        from attnbench.sweep.executors import ray_task

        self.nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.cpu_options, self.gpu_options = task_options(self.nodes)
        self._cpu_task = ray.remote(max_retries=0)(ray_task.run_pair).options(**self.cpu_options)
        self._gpu_task = ray.remote(num_gpus=1, max_retries=0)(ray_task.run_pair).options(**self.gpu_options)
        self.pending: dict[Any, tuple[deque[tuple[Problem, str]], Problem, str]] = {}

    def devices(self) -> list[str]:
        return cluster_devices(self.nodes)

    def describe(self) -> dict[str, Any]:
        nodes = [
            {
                "host": n.get("NodeManagerHostname", ""),
                "node_id": n.get("NodeID", ""),
                "cpus": (n.get("Resources") or {}).get("CPU", 0),
                "gpus": (n.get("Resources") or {}).get("GPU", 0),
            }
            for n in self.nodes
        ]
        return {"name": self.name, "address": self.address or "local", "nodes": nodes, "cpu_task": self.cpu_options}

    def set_log(self, path: Path) -> None:
        """Workers log on their own nodes (``$TMPDIR/attnbench-ray/``), not into the run folder."""

    def prepare(self, runner: Planner, info: dict[str, Any]) -> None:
        """Nothing up front: each node calibrates its devices in the first task that needs it."""

    def sweep(self, sweep: Sweep) -> None:
        import ray

        from attnbench.sweep.shards import group_of

        runner = sweep.runner
        run = f"{socket.gethostname()}:{runner.out_dir.resolve()}:{sweep.info.get('started')}"
        chains: dict[tuple[Any, ...], deque[tuple[Problem, str]]] = {}
        for case, impl in sweep.todo:
            chains.setdefault(group_of(case, impl), deque()).append((case, impl))

        def advance(chain: deque[tuple[Problem, str]]) -> None:
            """Submit the chain's next pair that needs a worker, settling the others here."""
            while chain:
                case, impl = chain.popleft()
                decided = runner.decide(case, impl, sweep.failures)
                if decided is not None:
                    sweep.emit(case, impl, decided)
                    continue
                job = runner.job(case, impl, [], sweep.failures)
                known = [c for c in sweep.info["calibration"] if c.get("device_name")]
                task = self._gpu_task if device(case.device).kind == "cuda" else self._cpu_task
                ref = task.remote(job, runner.budget, runner.plugins, known, run)
                self.pending[ref] = (chain, case, impl)
                sweep.started(case, impl)
                return

        for chain in chains.values():
            advance(chain)
        while self.pending:
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=POLL_S)
            for ref in ready:
                chain, case, impl = self.pending.pop(ref)
                sweep.emit(case, impl, self._collect(ref, case, impl, sweep))
                advance(chain)

    def _collect(self, ref: Any, case: Problem, impl: str, sweep: Sweep) -> Record:
        """The record a finished task returned, or the record of its Ray worker's death."""
        import ray

        def outcome(status: str, reason: str) -> Record:
            return Record(impl=impl, status=status, reason=reason, case=case.fields())

        try:
            result = ray.get(ref)
        except ray.exceptions.OutOfMemoryError as exc:
            return outcome(Status.OOM, f"Ray's memory monitor killed its Ray worker: {_first_line(exc)}")
        except ray.exceptions.RayTaskError as exc:  # attnbench's own task code raised: a harness error
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            return outcome(Status.ERROR, f"its Ray task failed: {type(cause).__name__}: {_first_line(cause)}")
        except ray.exceptions.RayError as exc:
            return outcome(Status.CRASHED, f"its Ray worker died ({type(exc).__name__}: {_first_line(exc)})")
        entry = result.get("calibration")
        if entry and entry not in sweep.info["calibration"]:
            sweep.info["calibration"].append(entry)
            sweep.save_info()
        return Record.from_dict(result["record"])

    def close(self) -> None:
        try:
            import ray
        except ImportError:
            return
        for ref in list(self.pending):
            with contextlib.suppress(Exception):  # already finished, or Ray already gone
                ray.cancel(ref, force=True)
        self.pending.clear()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
