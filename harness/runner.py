"""The sweep: every (case, implementation) of a suite ends as exactly one record.

The runner decides what it can without running anything (unavailable, unsupported, skipped
after a smaller size failed, predicted out of memory), hands the rest to a worker one at a time,
and writes each record the moment it exists. A failure in one pair never stops the sweep; a
resumed run finishes only the pairs that have no record yet.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnbench.machine import git_commit, machine_info, versions
from attnbench.records import BUDGET_FAILURES, CASE_KEYS, SCHEMA_VERSION, Record, RecordWriter, read_records, record_key
from attnbench.registry import Registry
from attnbench.suite import Case, Suite, detect_devices
from attnbench.workers import WorkerDied, WorkerPool, WorkerTimeout

RESULTS_DIR = Path("results")  # relative to where attnbench runs


class RunError(Exception):
    """A run that cannot start (bad output folder, unknown --only name)."""


def now() -> str:
    return dt.datetime.now(dt.UTC).astimezone().isoformat(timespec="seconds")


def default_out_dir(suite: Suite, machine_id: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return RESULTS_DIR / f"{stamp}_{suite.name}_{machine_id}"


@dataclass
class Failures:
    """Sizes at which an implementation failed its budget, per case group: a larger size of the
    same group is skipped rather than run into the same wall."""

    seen: dict[tuple[Any, ...], list[tuple[int, int, str]]] = field(default_factory=dict)

    @staticmethod
    def group(row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row[k] for k in ("impl", *CASE_KEYS) if k not in ("seq_len", "kv_len"))

    def add(self, row: dict[str, Any]) -> None:
        if row["status"] in BUDGET_FAILURES:
            self.seen.setdefault(self.group(row), []).append((row["seq_len"], row["kv_len"], row["status"]))

    def blocking(self, row: dict[str, Any]) -> str | None:
        for n, nk, status in self.seen.get(self.group(row), []):
            if row["seq_len"] >= n and row["kv_len"] >= nk:
                return f"a smaller size (seq_len {n}, kv_len {nk}) already ended as {status}"
        return None


class Runner:
    """Runs a suite into an output folder."""

    def __init__(
        self,
        suite: Suite,
        registry: Registry,
        out_dir: Path | None = None,
        *,
        plugins: list[str] | None = None,
        only: list[str] | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        self.suite = suite
        self.registry = registry
        self.plugins = [str(Path(p).resolve()) for p in (plugins or [])]
        self.machine = machine_info()
        self.out_dir = out_dir or default_out_dir(suite, self.machine["id"])
        self.resume = resume
        self.show_progress = progress
        self.impls = self._select(only)
        self.devices = detect_devices()
        self.pairs = [(c, i) for c, i in suite.pairs(registry.names(), self.devices) if i in self.impls]
        self.cases = list(dict.fromkeys(case for case, _ in self.pairs))

    def _select(self, only: list[str] | None) -> list[str]:
        names = self.suite.impl_names(self.registry.names())
        for name in names:
            self.registry.get(name)  # unknown names raise with "did you mean"
        if only:
            for name in only:
                self.registry.get(name)
                if name not in names:
                    raise RunError(f"--only {name}: not in suite {self.suite.name!r} (it has {', '.join(names)})")
            names = [n for n in names if n in only]
        return names

    # -- the run folder ----------------------------------------------------------------------

    def _prepare_folder(self) -> dict[str, Any]:
        results = self.out_dir / "results.jsonl"
        run_json = self.out_dir / "run.json"
        if self.resume:
            if not run_json.exists():
                raise RunError(f"--resume: {self.out_dir} holds no run.json to resume")
            info: dict[str, Any] = json.loads(run_json.read_text())
            info.setdefault("resumed", []).append(now())
            info["ended"] = None
            return info
        if results.exists() and results.stat().st_size:
            raise RunError(f"{self.out_dir} already holds results; use --resume to finish it or choose another --out")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return {
            "schema_version": SCHEMA_VERSION,
            "attnbench_version": versions().get("attnbench"),
            "git_commit": git_commit(),
            "started": now(),
            "ended": None,
            "suite": {"name": self.suite.name, "path": self.suite.path, "text": self.suite.text, **self.suite.raw},
            "machine": self.machine,
            "versions": versions(),
            "calibration": [],
            "implementations": [self.registry.get(n).declaration() for n in self.impls],
        }

    def _write_info(self, info: dict[str, Any]) -> None:
        tmp = self.out_dir / "run.json.tmp"
        tmp.write_text(json.dumps(info, indent=2, default=str))
        os.replace(tmp, self.out_dir / "run.json")

    # -- the sweep ---------------------------------------------------------------------------

    def run(self) -> Path:
        """Run every missing pair; returns the output folder."""
        from attnbench.progress import SweepProgress

        info = self._prepare_folder()
        self._write_info(info)
        existing = read_records(self.out_dir / "results.jsonl")
        done = {record_key(r) for r in existing}
        failures = Failures()
        for row in existing:
            failures.add(row)
        total = len(self.pairs)
        pool = WorkerPool(self.plugins, self.out_dir / "workers.log")
        with _terminate_on_signals(pool), RecordWriter(self.out_dir / "results.jsonl") as writer:
            try:
                self._calibrate(info, pool)
                self._write_info(info)
                peaks = {(c["device"], c["dtype"], c["requested_threads"]): c["gflops"] for c in info["calibration"]}
                with SweepProgress(total, done=len(done) if self.show_progress else 0) as progress:
                    for case, impl in self.pairs:
                        fields = {"impl": impl, **case.fields()}
                        if record_key(fields) in done:
                            continue
                        progress.start(case.label(), impl)
                        record = self._run_pair(case, impl, pool, failures, peaks)
                        record.suite, record.machine = self.suite.name, self.machine["id"]
                        writer.write(record)
                        failures.add(record.__dict__)
                        progress.finish(case.label(), record.__dict__)
                    print(progress.summary(), flush=True)
            finally:
                pool.close()
                info["ended"] = now()
                self._write_info(info)
        return self.out_dir

    def _calibrate(self, info: dict[str, Any], pool: WorkerPool) -> None:
        have = {(c["device"], c["dtype"], c["requested_threads"]) for c in info["calibration"]}
        wanted = {
            (c.problem.device, c.problem.dtype, c.threads) for c in self.cases if c.problem.device in self.devices
        }
        for device, dtype, threads in sorted(wanted - have):
            try:
                answer = pool.request({"op": "calibrate", "device": device, "dtype": dtype, "threads": threads}, 300)
                entry = answer["calibration"]
            except (WorkerTimeout, WorkerDied, KeyError) as exc:
                entry = {"device": device, "dtype": dtype, "threads": threads, "gflops": None, "error": str(exc)}
            entry["requested_threads"] = threads
            info["calibration"].append(entry)

    def _run_pair(
        self, case: Case, name: str, pool: WorkerPool, failures: Failures, peaks: dict[tuple[Any, ...], float]
    ) -> Record:
        fields = case.fields()
        budget = self.suite.budget

        def outcome(status: str, reason: str) -> Record:
            return Record(impl=name, status=status, reason=reason, **fields)  # type: ignore[arg-type]

        impl = self.registry.get(name)
        avail = impl.available()
        if case.problem.device not in self.devices:
            return outcome("unavailable", f"no {case.problem.device} device on this machine")
        if not avail.ok:
            return outcome("unavailable", avail.reason)
        unsupported = impl.supports(case.problem)
        if unsupported:
            return outcome("unsupported", unsupported)
        row = {"impl": name, **fields}
        if self.suite.stop_on_failure and (why := failures.blocking(row)):
            return outcome("skipped", why)
        estimate = impl.memory_estimate(case.problem)
        limit = budget["memory_gib"] * 2**30
        if estimate is not None and estimate > limit:
            return outcome(
                "oom",
                f"predicted {estimate / 2**30:.1f} GiB beyond the inputs, over the"
                f" {budget['memory_gib']:g} GiB budget; not started",
            )
        job = {
            "op": "case", "case": fields, "impl": name, "baseline": self.suite.baseline,
            "budget": budget, "seed": self.suite.seed,
            "peak_gflops": peaks.get((case.problem.device, case.problem.dtype, case.threads)),
        }  # fmt: skip
        try:
            answer = pool.request(job, budget["timeout_s"])
        except WorkerTimeout:
            return outcome("timeout", f"did not finish within {budget['timeout_s']:g} s; its worker was killed")
        except WorkerDied as exc:
            return outcome("crashed", exc.reason)
        if "fatal" in answer:
            return outcome("error", answer["fatal"])
        return Record(**answer["record"])


@contextlib.contextmanager
def _terminate_on_signals(pool: WorkerPool) -> Iterator[None]:
    """On SIGTERM, kill the worker and leave through the normal exit path (records are flushed)."""

    def handler(signum: int, frame: object) -> None:
        pool.close()
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
