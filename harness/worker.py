"""The worker: a fresh interpreter that runs one (case, implementation) job at a time.

Started by the runner with ``python -m attnbench.worker`` (a new process, never a fork of the
runner), in a process group of its own so that a timeout can kill it and anything it started.
Jobs arrive as JSON lines on one pipe and answers leave on another. The worker exits on its own
within a second if its runner dies, even under ``kill -9``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import signal
import sys
import threading
import time
import traceback
from typing import IO, Any

import torch
from attnbench.measure import run_case


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
    from attnbench.memory import vm_size_bytes

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = resource.RLIM_INFINITY if extra_bytes is None else vm_size_bytes() + extra_bytes
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def calibrate(job: dict[str, Any]) -> dict[str, Any]:
    from attnbench.calibrate import matmul_peak_gflops

    threads = int(job.get("threads") or os.cpu_count() or 1)
    torch.set_num_threads(threads)
    gflops = matmul_peak_gflops(job["device"], job["dtype"])
    return {"device": job["device"], "dtype": job["dtype"], "threads": threads, "gflops": gflops}


def serve(jobs: IO[str], answers: IO[str], plugins: list[str]) -> None:
    from attnbench.registry import load_registry

    registry = load_registry(plugins)
    answers.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    answers.flush()
    for line in jobs:
        job = json.loads(line)
        try:
            if job["op"] == "calibrate":
                answer: dict[str, Any] = {"calibration": calibrate(job)}
            else:
                answer = run_case(registry, job, set_memory_cap)
        except BaseException as exc:  # the runner records it; the worker is replaced
            answer = {"fatal": "".join(traceback.format_exception_only(type(exc), exc)).strip()}
        answers.write(json.dumps(answer, allow_nan=True) + "\n")
        answers.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m attnbench.worker")
    parser.add_argument("--jobs-fd", type=int, required=True)
    parser.add_argument("--answers-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--plugin", action="append", default=[])
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    if os.getppid() != args.parent:  # the runner died before we started watching
        sys.exit(1)
    with (
        os.fdopen(args.jobs_fd, "r", encoding="utf-8") as jobs,
        os.fdopen(args.answers_fd, "w", encoding="utf-8") as answers,
    ):
        serve(jobs, answers, args.plugin)


if __name__ == "__main__":
    main()
