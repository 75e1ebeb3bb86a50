"""The worker: a fresh interpreter that runs one (case, implementation) job at a time.

Started by the runner with ``python -m attnbench.sweep.worker`` (a new process, never a fork of the
runner), in a process group of its own so that a timeout can kill it and anything it started.
Jobs arrive as JSON lines on one pipe and answers leave on another; while a case runs, the
worker also sends each step it enters and, before the reference check, the record so far
(:mod:`attnbench.measure.steps`). All plugin code — imports, availability, ``supports()``, set-up —
runs here, never in the runner. The worker exits on its own within a second if its runner dies,
even under ``kill -9``.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import resource
import signal
import sys
import threading
import time
import traceback
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attnbench.plugins.registry import Registry


def _die_with_parent(parent: int) -> None:
    """Kill this process group as soon as the runner is gone."""
    with contextlib.suppress(Exception):  # Linux: the kernel signals us when the parent dies
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os.killpg(os.getpgrp(), signal.SIGKILL)
            time.sleep(0.25)

    threading.Thread(target=watch, name="attnbench-parent-watch", daemon=True).start()


def set_memory_cap(extra_bytes: int | None) -> None:
    """Cap the address space at its current size plus ``extra_bytes`` (None lifts the cap), so a
    runaway allocation fails inside the worker as out-of-memory instead of swapping the machine."""
    from attnbench.measure.memory import vm_size_bytes

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = resource.RLIM_INFINITY if extra_bytes is None else vm_size_bytes() + extra_bytes
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def calibrate(job: dict[str, Any]) -> dict[str, Any]:
    """The matmul peak (and its probe) for a device, dtype and thread count, and the device's
    memory bandwidth with the same threads."""
    from attnbench.measure.calibrate import calibrate_gemm, calibrate_stream
    from attnbench.measure.devices import device

    where = device(job["device"])
    where.activate()
    threads = where.set_threads(int(job.get("threads") or 0))
    entry: dict[str, Any] = {"device": job["device"], "dtype": job["dtype"], "threads": threads}
    entry.update(calibrate_gemm(job["device"], job["dtype"]))
    entry.update(calibrate_stream(job["device"]))
    return entry


def redirect_output(path: str) -> str:
    """Send this process's standard output and error to ``path`` (appending) from now on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return path


def describe(registry: Registry) -> dict[str, Any]:
    """Every implementation's declaration (availability asked here, in the worker), and the aliases."""
    return {
        "declarations": [impl.declaration() for impl in registry.implementations()],
        "aliases": registry.aliases(),
    }


def settle_heap() -> None:
    """Collect, then move every object alive now out of the collector's sight (``gc.freeze``).

    The harness collects garbage around each pair (so that memory passes start clean); with
    torch, the registry and the plugins imported that is some 200 000 long-lived objects and
    80-300 ms a collection, several times a pair, most of a small case's time. Frozen, they are
    never scanned again; garbage made afterwards is collected as before. Called between jobs,
    after the job's own objects are released, so that nothing of a finished case is frozen
    but what a module keeps (an import, a compiled kernel's cache)."""
    gc.collect()
    gc.freeze()


def serve(jobs: IO[str], answers: IO[str], plugins: list[str]) -> None:
    from attnbench.measure.case_run import run_case
    from attnbench.measure.paired import time_pair
    from attnbench.measure.profile import profile_pair
    from attnbench.plugins.registry import load_registry

    def send(message: dict[str, Any]) -> None:
        answers.write(json.dumps(message, allow_nan=True) + "\n")
        answers.flush()

    try:
        registry = load_registry(plugins)
    except Exception as exc:  # a plugin file that cannot register (a taken name): say so and stop
        send({"ready": False, "failure": "".join(traceback.format_exception_only(type(exc), exc)).strip()})
        return
    settle_heap()
    send({"ready": True, "pid": os.getpid()})
    for line in jobs:
        job = json.loads(line)
        try:
            if job["op"] == "calibrate":
                answer: dict[str, Any] = {"calibration": calibrate(job)}
            elif job["op"] == "describe":
                answer = {"describe": describe(registry)}
            elif job["op"] == "log":
                answer = {"describe": {"log": redirect_output(job["path"])}}
            elif job["op"] == "pair":
                answer = {"pair": time_pair(registry, job)}
            elif job["op"] == "profile":
                answer = {"profile": profile_pair(registry, job)}
            else:
                answer = run_case(registry, job, set_memory_cap, send)
        except BaseException as exc:  # the runner records it; the worker is replaced
            answer = {"fatal": "".join(traceback.format_exception_only(type(exc), exc)).strip()}
        send(answer)
        del answer
        settle_heap()  # the job's garbage collected first; what it imported or cached is frozen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m attnbench.sweep.worker")
    parser.add_argument("--jobs-fd", type=int, required=True)
    parser.add_argument("--answers-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--plugin", action="append", default=[])
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    if os.getppid() != args.parent:  # the runner died before we started watching
        sys.exit(1)
    from attnbench.measure.memory import timing_allocator

    timing_allocator()  # before any allocation of a job: every timed call runs under it
    with (
        os.fdopen(args.jobs_fd, "r", encoding="utf-8") as jobs,
        os.fdopen(args.answers_fd, "w", encoding="utf-8") as answers,
    ):
        serve(jobs, answers, args.plugin)


if __name__ == "__main__":
    main()
