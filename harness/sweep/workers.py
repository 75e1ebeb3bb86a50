"""The runner's side of a worker: start it, send it a job, follow its steps, kill it.

Each worker is a fresh ``python -m attnbench.sweep.worker`` in a session (and process group) of its own;
a timeout kills the whole group, so nothing the implementation started survives it. While a
case runs the worker announces each step (:mod:`attnbench.measure.steps`); the deadline follows the
step's owner, each owner with a budget of its own, and a timeout or a death says in which step
it happened and carries the record as it stood before the reference check.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import atexit
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

from attnbench.measure import steps

#: Environment for workers: Inductor compiles in process (no compile-worker pool that a killed
#: worker could leave behind). The allocator is set by the worker itself (attnbench.measure.memory).
WORKER_ENV = {
    "TORCHINDUCTOR_COMPILE_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}
START_TIMEOUT_S = 180.0
FINAL_KEYS = ("record", "calibration", "describe", "fatal", "pair", "profile")


class WorkerFailure(Exception):
    """A job that ended without an answer: ``step`` is where, ``partial`` the record so far,
    ``callee`` whose call was running in the timing step (the implementation's or the baseline's)."""

    def __init__(
        self, reason: str = "", step: str = "", partial: dict[str, Any] | None = None, callee: str = "impl"
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.step = step
        self.partial = partial
        self.callee = callee


class WorkerTimeout(WorkerFailure):
    pass


class WorkerDied(WorkerFailure):
    """The worker exited while a job was in flight; ``reason`` names the signal or exit code."""


class WorkerStartError(Exception):
    """The worker never became ready (a plugin that cannot register, a broken environment)."""


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


class Budgets:
    """Seconds left to each owner of a job's steps. ``timing`` may spend the implementation's and
    the baseline's remaining time plus ``extra`` (the machine probe); while a baseline call runs in
    it (the worker says so), that call is on the baseline's own remaining time, which its calls
    spend, so a baseline that hangs there is stopped at its own budget and found to be the one."""

    def __init__(self, timeout_s: float, extra_s: float = 0.0) -> None:
        self.left: dict[str, float] = {"impl": timeout_s, "baseline": timeout_s, "reference": timeout_s}
        self.extra_s = extra_s
        self.step = steps.LOAD
        self.since = time.monotonic()
        self.callee = "impl"
        self.callee_since = self.since

    def allowance(self) -> float:
        owner = steps.owner(self.step)
        if owner == "timing":
            return self.left["impl"] + self.left["baseline"] + self.extra_s
        return self.left[owner]

    def deadline(self) -> float:
        deadline = self.since + self.allowance()
        if steps.owner(self.step) == "timing" and self.callee == "baseline":
            deadline = min(deadline, self.callee_since + self.left["baseline"])
        return deadline

    def enter(self, step: str) -> None:
        now = time.monotonic()
        self.switch("impl")
        owner = steps.owner(self.step)
        if owner != "timing":
            self.left[owner] = max(0.0, self.left[owner] - (now - self.since))
        self.step, self.since = step, now

    def switch(self, callee: str) -> None:
        """A call of ``callee`` ("impl" or "baseline") starts in the timing step."""
        now = time.monotonic()
        if self.callee == "baseline":
            self.left["baseline"] = max(0.0, self.left["baseline"] - (now - self.callee_since))
        self.callee, self.callee_since = callee, now


class Worker:
    """One worker process and its two pipes."""

    def __init__(
        self, plugins: list[str], log: Path | None = None, start_timeout: float = START_TIMEOUT_S, wait: bool = True
    ) -> None:
        self.plugins = list(plugins)
        self.start_timeout = start_timeout
        jobs_r, self._jobs_w = os.pipe()
        self._answers_r, answers_w = os.pipe()
        env = {**os.environ, **WORKER_ENV}
        cmd = [sys.executable, "-m", "attnbench.sweep.worker", "--jobs-fd", str(jobs_r), "--answers-fd", str(answers_w)]
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
        self._started_at = time.monotonic()
        self.ready = False
        self._where = log
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait for the worker's hello (within its start timeout, counted from its start)."""
        if self.ready:
            return
        try:
            hello = self._read(self._started_at + self.start_timeout)
        except WorkerTimeout:
            self.kill()
            raise WorkerStartError(f"the worker did not become ready within {self.start_timeout:g} s") from None
        except WorkerDied as exc:
            self.kill()
            raise WorkerStartError(f"the worker failed to start ({exc.reason}); see {self._where}") from None
        if not hello.get("ready"):
            self.kill()
            raise WorkerStartError(str(hello.get("failure") or hello))
        self.ready = True

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(self, job: dict[str, Any], budgets: Budgets | float) -> dict[str, Any]:
        """Send ``job`` and follow it to its answer; raises WorkerTimeout or WorkerDied, which say
        the step it was in and carry the last partial record."""
        plan = budgets if isinstance(budgets, Budgets) else Budgets(float(budgets))
        partial: dict[str, Any] | None = None
        try:
            os.write(self._jobs_w, (json.dumps(job) + "\n").encode())
        except BrokenPipeError:
            raise WorkerDied(describe_exit(self.proc.wait(timeout=5)), plan.step, callee=plan.callee) from None
        while True:
            try:
                message = self._read(plan.deadline())
            except WorkerFailure as exc:
                exc.step, exc.partial, exc.callee = plan.step, partial, plan.callee
                raise
            if "phase" in message:
                plan.enter(str(message["phase"]))
            elif "callee" in message:
                plan.switch(str(message["callee"]))
            elif "partial" in message:
                partial = message["partial"]
            if any(key in message for key in FINAL_KEYS):
                return message

    def _read(self, deadline: float) -> dict[str, Any]:
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


#: A worker started before the command's own imports (:func:`start_early`), for the first pool
#: that asks for one with the same plugins.
_EARLY: list[Worker] = []


def start_early(plugins: list[str]) -> None:
    """Start a worker now, without waiting for it: the command imports PyTorch and reads its
    suite on one core while the worker imports PyTorch and loads the plugins on the other. One
    no pool adopts is stopped when the command exits."""
    if not _EARLY:
        atexit.register(_stop_early)
    _EARLY.append(Worker(plugins, wait=False))


def _stop_early() -> None:
    while _EARLY:
        _EARLY.pop().kill()


def _adopt(plugins: list[str], log: Path | None) -> Worker | None:
    """The early worker, when it serves these plugins and writes nowhere else (else it is stopped)."""
    while _EARLY:
        worker = _EARLY.pop()
        if worker.plugins == list(plugins) and log is None and worker.proc.poll() is None:
            return worker
        worker.kill()
    return None


class WorkerPool:
    """At most one live worker, reused across jobs and replaced after any failure."""

    def __init__(self, plugins: list[str], log: Path | None = None, start_timeout: float = START_TIMEOUT_S) -> None:
        self.plugins = plugins
        self.log = log
        self.start_timeout = start_timeout
        self.worker: Worker | None = None
        self.started = 0
        self.start_s = 0.0  # seconds spent starting workers, until each said it was ready

    def get(self) -> Worker:
        if self.worker is None and (early := _adopt(self.plugins, self.log)) is not None:
            self.worker, self.started = early, self.started + 1
        if self.worker is None or self.worker.proc.poll() is not None:
            self.worker = Worker(self.plugins, self.log, self.start_timeout, wait=False)
            self.started += 1
        if not self.worker.ready:
            began = time.perf_counter()
            try:
                self.worker.wait_ready()
            finally:
                self.start_s += time.perf_counter() - began
        return self.worker

    def set_log(self, path: Path) -> None:
        """Workers write their output to ``path`` from now on (the live one too)."""
        self.log = path
        if self.worker is not None and self.worker.proc.poll() is None:
            self.request({"op": "log", "path": str(path)}, 30)

    def discard(self) -> None:
        if self.worker is not None:
            self.worker.kill()
            self.worker = None

    def request(self, job: dict[str, Any], budgets: Budgets | float) -> dict[str, Any]:
        """Run ``job`` on the current worker; the worker is discarded on any failure."""
        worker = self.get()
        try:
            answer = worker.request(job, budgets)
        except WorkerFailure:
            self.discard()
            raise
        if not answer.get("healthy", True) or "fatal" in answer:
            self.discard()
        return answer

    def close(self) -> None:
        self.discard()
