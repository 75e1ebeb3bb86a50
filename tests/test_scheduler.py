"""All devices of a machine at once, checked without GPUs: the scheduler and the local executor
driven with fake devices, fake jobs and fake worker pools."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from attnbench.case.problem import Problem
from attnbench.measure.records import Record
from attnbench.sweep.executors.local import LocalExecutor
from attnbench.sweep.jobs import Failures, Sweep
from attnbench.sweep.scheduler import DeviceScheduler, cpu_is_exclusive

DEVICES = ["cpu", "cuda:0", "cuda:1", "cuda:2"]


def overlaps(spans: list[tuple[str, float, float]]) -> list[str]:
    """Spans that broke the rules: two on one device at once, or a CPU span beside anything."""
    found = []
    ordered = sorted(spans, key=lambda s: s[1])
    for i, (dev_a, start_a, end_a) in enumerate(ordered):
        for dev_b, start_b, _ in ordered[i + 1 :]:
            if start_b >= end_a:
                break
            if dev_a == dev_b or cpu_is_exclusive(dev_a) or cpu_is_exclusive(dev_b):
                found.append(f"{dev_a} [{start_a:.3f}, {end_a:.3f}] overlaps {dev_b} from {start_b:.3f}")
    return found


class Timed:
    """A fake job function: sleeps, and notes on which device and when it ran."""

    def __init__(self, seconds: float = 0.03) -> None:
        self.seconds = seconds
        self.spans: list[tuple[str, float, float]] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, job: tuple[str, int]) -> str:
        start = time.monotonic()
        time.sleep(self.seconds)
        with self.lock:
            self.spans.append((job[0], start, time.monotonic()))
            self.threads.add(threading.current_thread().name)
        return f"{job[0]}#{job[1]}"


def jobs_on(devices: list[str], per_device: int) -> list[tuple[str, int]]:
    """Jobs interleaved across devices, as a grid with device = "auto" orders them."""
    return [(d, i) for i in range(per_device) for d in devices]


def test_no_two_jobs_share_a_device_and_cpu_jobs_run_alone() -> None:
    timed = Timed()
    done: list[tuple[tuple[str, int], str]] = []
    caller = threading.current_thread().name

    def finish(job: tuple[str, int], result: str) -> None:
        assert threading.current_thread().name == caller  # results come back to one thread
        done.append((job, result))

    DeviceScheduler().run(jobs_on(DEVICES, 5), lambda j: j[0], timed, finish)
    assert overlaps(timed.spans) == []
    assert sorted(job for job, _ in done) == sorted(jobs_on(DEVICES, 5))
    assert all(result == f"{job[0]}#{job[1]}" for job, result in done)


def test_gpus_really_run_at_once() -> None:
    timed = Timed(0.1)
    started = time.monotonic()
    DeviceScheduler().run(jobs_on(["cuda:0", "cuda:1", "cuda:2"], 3), lambda j: j[0], timed, lambda j, r: None)
    elapsed = time.monotonic() - started
    assert elapsed < 0.7, f"9 jobs of 0.1 s on 3 GPUs took {elapsed:.2f} s: not concurrent"
    assert len(timed.threads) == 3  # one thread per device


def test_each_device_keeps_the_given_order() -> None:
    timed = Timed(0.005)
    order: list[tuple[str, int]] = []
    DeviceScheduler().run(jobs_on(DEVICES, 6), lambda j: j[0], timed, lambda j, r: order.append(j))
    for dev in DEVICES:
        assert [i for d, i in order if d == dev] == list(range(6))


def test_a_job_is_sent_only_after_the_previous_one_on_its_device_is_done() -> None:
    """What stop-on-failure needs: the next size starts after the smaller one's record exists."""
    finished: set[tuple[str, int]] = set()
    violations = []

    def execute(job: tuple[str, int]) -> None:
        device, i = job
        if i and (device, i - 1) not in finished:
            violations.append(job)
        time.sleep(0.002)

    DeviceScheduler().run(jobs_on(DEVICES, 4), lambda j: j[0], execute, lambda j, r: finished.add(j))
    assert violations == []


def test_an_error_in_a_job_stops_the_run_and_is_raised() -> None:
    def execute(job: tuple[str, int]) -> None:
        if job == ("cuda:1", 1):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        DeviceScheduler().run(jobs_on(DEVICES, 3), lambda j: j[0], execute, lambda j, r: None)


# -- the local executor with fake pools ---------------------------------------------------------


class FakePool:
    """Stands for a device's WorkerPool: records which device's jobs it got."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.jobs: list[dict[str, Any]] = []
        self.closed = False
        self.log: Path | None = None

    def request(self, job: dict[str, Any], budgets: object) -> dict[str, Any]:
        self.jobs.append(job)
        time.sleep(0.02)
        record = Record(impl=job["impl"], status="ok", case=job["case"], host="fake", device_name=self.device)
        return {"record": record.as_dict()}

    def set_log(self, path: Path) -> None:
        self.log = path

    def close(self) -> None:
        self.closed = True


class FakeRunner:
    """The part of a Runner an executor uses, with every pair sent to a worker."""

    def __init__(self, spans: list[tuple[str, float, float]]) -> None:
        self.spans = spans
        self.lock = threading.Lock()

    def calibrate(self, info: dict[str, Any], pool_for: Callable[[str], Any]) -> None:
        info["calibration"] = [{"device": d} for d in DEVICES]

    def run_pair(self, case: Problem, name: str, failures: Failures, calibration: list[Any], pool: Any) -> Record:
        start = time.monotonic()
        answer = pool.request({"impl": name, "case": case.fields()}, None)
        with self.lock:
            self.spans.append((case.device, start, time.monotonic()))
        return Record.from_dict(answer["record"])


def test_local_executor_gives_each_device_its_own_pool_and_one_record_per_pair(tmp_path: Path) -> None:
    pools: dict[str, FakePool] = {}

    def factory(device: str) -> FakePool:
        pools[device] = FakePool(device)
        return pools[device]

    executor = LocalExecutor([], devices=DEVICES, pool_factory=factory)
    executor.set_log(tmp_path / "workers.log")
    spans: list[tuple[str, float, float]] = []
    runner = FakeRunner(spans)
    pairs = [(Problem(seq_len=n, device=d), impl) for n in (16, 32) for d in DEVICES for impl in ("a", "b")]
    emitted: list[tuple[Problem, str, Record]] = []
    info: dict[str, Any] = {"calibration": []}
    executor.prepare(runner, info)
    sweep = Sweep(
        runner, pairs, Failures(), info, lambda c, i, r: emitted.append((c, i, r)), lambda c, i: None, lambda: None
    )
    executor.sweep(sweep)
    executor.close()

    assert executor.devices() == DEVICES
    assert sorted(pools) == sorted(DEVICES)
    for device, pool in pools.items():
        assert pool.jobs and all(job["case"]["device"] == device for job in pool.jobs)
        assert pool.closed and pool.log == tmp_path / "workers.log"
    assert len(emitted) == len(pairs)
    assert {(c, i) for c, i, _ in emitted} == set(pairs)
    assert all(r.device_name == c.device for c, _, r in emitted)  # each timed on its own device
    assert overlaps(spans) == []
