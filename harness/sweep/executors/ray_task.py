"""What a Ray task does on its node: run one pair in the same isolated worker as a local run.

The task (:func:`run_pair`) starts ``python -m attnbench.sweep.worker`` as a child process, exactly as
the local runner does, and sends it the pair's job; a worker that crashes, runs past its budget
or runs out of memory ends as the same status as locally (:func:`attnbench.sweep.jobs.run_job`).
The record goes back to the driver as the task's return value, with the node, the device and
the GPU driver that ran it; the driver alone writes it.

A CPU task keeps its worker for the next CPU task that Ray gives the same Ray worker process (a
worker costs seconds to start); a GPU task gets a fresh Ray worker from Ray (``max_calls=1``,
Ray's default for GPU tasks) and closes its worker when it ends, so no idle process keeps
memory on a GPU that Ray may lend to another task.

Each (host, device, dtype, threads) is calibrated once per run, by the first task that needs it
there, while it holds its device: the driver passes the calibrations it has to every task, and
tasks on one host share theirs through a file in the host's temporary folder, locked while one
task measures, so that tasks submitted together do not all measure the same device.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The worker pool this Ray worker process keeps between CPU tasks, with what it was made for.
_KEPT: dict[str, Any] = {}


@dataclass(frozen=True)
class Node:
    """Where a task runs: the host, Ray's node id, and the GPU Ray reserved for it (if any)."""

    host: str
    node_id: str
    gpu_index: int | None  # the GPU's index on its host (CUDA_VISIBLE_DEVICES as Ray set it)
    gpu_name: str
    driver: str

    @property
    def device(self) -> str:
        """The task's device as its worker names it: Ray shows a GPU task only its own GPU."""
        return "cpu" if self.gpu_index is None else "cuda:0"


def this_node() -> Node:
    import ray

    host = socket.gethostname()
    node_id = ray.get_runtime_context().get_node_id()
    gpus = [int(g) for g in ray.get_gpu_ids()]
    if not gpus:
        return Node(host, node_id, None, "", "")
    name, driver = _nvidia_smi(gpus[0])
    return Node(host, node_id, gpus[0], name, driver)


def _nvidia_smi(index: int) -> tuple[str, str]:
    """The name and driver version of GPU ``index`` (empty where nvidia-smi cannot say)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={index}", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "", ""
    name, _, driver = out.stdout.strip().partition(",")
    return (name.strip(), driver.strip()) if out.returncode == 0 else ("", "")


def _pool(plugins: list[str], node: Node) -> Any:
    """A worker pool for this task: the kept one where it fits, else a new one."""
    from attnbench.sweep.workers import WorkerPool

    key = repr((plugins, node.gpu_index, os.environ.get("CUDA_VISIBLE_DEVICES")))
    if _KEPT.get("key") == key:
        return _KEPT["pool"]
    if "pool" in _KEPT:
        _KEPT.pop("pool").close()
    log = Path(tempfile.gettempdir()) / "attnbench-ray" / f"workers-{os.getpid()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # Ray sets OMP_NUM_THREADS to the task's CPUs; the worker sets the case's threads itself.
    os.environ.pop("OMP_NUM_THREADS", None)
    pool = WorkerPool(plugins, log)
    if node.gpu_index is None:
        _KEPT.update(key=key, pool=pool)
    return pool


def _calibration(
    pool: Any, case: dict[str, Any], node: Node, known: list[dict[str, Any]], run: str
) -> tuple[dict[str, Any], bool]:
    """The calibration of this task's host and device for the case's dtype and threads, and
    whether the driver has yet to learn it (then it keeps it for the next tasks)."""
    from attnbench.sweep.calibration_cache import measure

    where = node.gpu_name or "cpu"
    key = (node.host, where, case["dtype"], case["threads"])
    for entry in known:
        if (entry.get("host"), entry.get("device_name"), entry.get("dtype"), entry.get("requested_threads")) == key:
            return entry, False
    name = hashlib.sha256(repr((run, key)).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "attnbench-ray" / f"calibration-{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # one task measures; the others on this host wait and read it
        fh.seek(0)
        text = fh.read()
        if text.strip():
            return json.loads(text), True
        entry = measure(pool, node.device, case["dtype"], case["threads"])
        entry.update(host=node.host, device_name=where, requested_threads=case["threads"], gpu_index=node.gpu_index)
        fh.write(json.dumps(entry))
        fh.flush()
    return entry, True


def run_pair(
    job: dict[str, Any], budget: dict[str, float], plugins: list[str], known: list[dict[str, Any]], run: str
) -> dict[str, Any]:
    """Run one pair's job on this node; returns ``{"record": …, "calibration": … or None}``.
    ``known`` are the calibrations the driver has, ``run`` names the run (for the shared file)."""
    from attnbench.measure.figures import CALIBRATION_KEYS
    from attnbench.sweep.jobs import run_job

    node = this_node()
    pool = _pool(plugins, node)
    try:
        case = {**job["case"], "device": node.device}
        calibration, measured = _calibration(pool, case, node, known, run)
        inside = {**job, "case": case, "calibration": {k: calibration.get(k) for k in CALIBRATION_KEYS}}
        record = run_job(pool, inside, budget)
    finally:
        if node.gpu_index is not None:
            pool.close()
    record.case["device"] = job["case"]["device"]  # the pair's own name for its device
    record.host = record.host or node.host
    record.device_name = record.device_name or node.gpu_name
    record.node, record.gpu_index, record.driver = node.node_id, node.gpu_index, node.driver
    return {"record": record.as_dict(), "calibration": calibration if measured else None}
