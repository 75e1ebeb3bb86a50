"""The runner's side of a worker: start it, send it a job, wait with a timeout, kill it.

Each worker is a fresh ``python -m attnbench.worker`` in a session (and process group) of its own;
a timeout kills the whole group, so nothing the implementation started survives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

#: Environment for workers: glibc returns large freed buffers to the system (so one call's peak
#: resident set is not hidden by memory kept from an earlier call), and Inductor compiles in
#: process (no compile-worker pool that a killed worker could leave behind).
WORKER_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "MALLOC_TRIM_THRESHOLD_": "131072",
    "TORCHINDUCTOR_COMPILE_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}
START_TIMEOUT_S = 180.0


class WorkerTimeout(Exception):
    pass


class WorkerDied(Exception):
    """The worker exited while a job was in flight; ``reason`` names the signal or exit code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "worker vanished"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"worker killed by {name}"
    return f"worker exited with code {returncode}"


class Worker:
    """One worker process and its two pipes."""

    def __init__(self, plugins: list[str], log: Path | None = None) -> None:
        jobs_r, self._jobs_w = os.pipe()
        self._answers_r, answers_w = os.pipe()
        env = {**os.environ, **WORKER_ENV}
        cmd = [sys.executable, "-m", "attnbench.worker", "--jobs-fd", str(jobs_r), "--answers-fd", str(answers_w)]
        cmd += ["--parent", str(os.getpid())]
        for plugin in plugins:
            cmd += ["--plugin", plugin]
        self._log: IO[bytes] | None = log.open("ab") if log else None
        out = self._log or subprocess.DEVNULL
        self.proc = subprocess.Popen(
            cmd, pass_fds=(jobs_r, answers_w), start_new_session=True, env=env,
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
        os.close(jobs_r)
        os.close(answers_w)
        self._buffer = b""
        hello = self._read(START_TIMEOUT_S)
        if not hello.get("ready"):
            self.kill()
            raise WorkerDied(f"worker failed to start: {hello}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send ``job`` and wait for its answer; raises WorkerTimeout or WorkerDied."""
        try:
            os.write(self._jobs_w, (json.dumps(job) + "\n").encode())
        except BrokenPipeError:
            raise WorkerDied(describe_exit(self.proc.wait(timeout=5))) from None
        return self._read(timeout)

    def _read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerTimeout()
            ready, _, _ = select.select([self._answers_r], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(self._answers_r, 1 << 20)
            if not chunk:
                try:
                    code = self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    code = None
                raise WorkerDied(describe_exit(code))
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def kill(self) -> None:
        """Kill the worker's whole process group and reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        for fd in (self._jobs_w, self._answers_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._log:
            self._log.close()
            self._log = None


class WorkerPool:
    """At most one live worker, reused across jobs and replaced after any failure."""

    def __init__(self, plugins: list[str], log: Path | None = None) -> None:
        self.plugins = plugins
        self.log = log
        self.worker: Worker | None = None
        self.started = 0

    def get(self) -> Worker:
        if self.worker is None or self.worker.proc.poll() is not None:
            self.worker = Worker(self.plugins, self.log)
            self.started += 1
        return self.worker

    def discard(self) -> None:
        if self.worker is not None:
            self.worker.kill()
            self.worker = None

    def request(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run ``job`` on the current worker; the worker is discarded on any failure."""
        worker = self.get()
        try:
            answer = worker.request(job, timeout)
        except (WorkerTimeout, WorkerDied):
            self.discard()
            raise
        if not answer.get("healthy", True) or "fatal" in answer:
            self.discard()
        return answer

    def close(self) -> None:
        self.discard()
