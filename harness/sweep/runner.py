"""The sweep: every (case, implementation) of a suite ends as exactly one record.

The runner decides what it can without running plugin code — a device that is not here, an
implementation already found unavailable on it, a larger size after a smaller one failed its
budget — and hands everything else to a worker, one pair at a time, writing each record the
moment it exists. Availability, ``supports()``, declared memory and everything else a plugin
says are asked of the worker (:mod:`attnbench.measure.case_run`). A failure in one pair never stops the
sweep; a resumed run finishes only the pairs that have no record yet, and only for the suite the
folder was started with.

Where the pairs run is an executor's concern (:mod:`attnbench.sweep.executors`): by default every
device of this machine, one worker per device (:class:`~attnbench.sweep.executors.local.LocalExecutor`),
or Ray tasks across a cluster. Whichever runs them, the runner alone writes the records. A
``shard`` (:mod:`attnbench.sweep.shards`) restricts the sweep to one part of the suite's pairs.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from attnbench.case.keys import record_key
from attnbench.case.status import Status
from attnbench.measure import steps
from attnbench.measure.figures import CALIBRATION_KEYS
from attnbench.measure.machine import git_commit, machine_info, versions
from attnbench.measure.records import SCHEMA_VERSION, Record, RecordWriter, read_records
from attnbench.plugins.catalog import Catalog
from attnbench.plugins.contract import unmet
from attnbench.sweep import cost, estimate, pairs, shards
from attnbench.sweep.calibration_cache import calibrate_run
from attnbench.sweep.executors.local import LocalExecutor
from attnbench.sweep.folder import RunError, default_out_dir, now, read_run_json, suite_hash
from attnbench.sweep.jobs import Executor, Failures, Sweep, run_job
from attnbench.sweep.suite import Case, Suite
from attnbench.sweep.workers import WorkerFailure, WorkerPool, WorkerStartError

__all__ = ["RunError", "Runner", "declared_support", "describe", "read_run_json"]


def describe(pool: WorkerPool) -> Catalog:
    """The implementations a worker of ``pool`` has, declared (no plugin code runs here)."""
    try:
        answer = pool.request({"op": "describe"}, 600)
    except WorkerStartError as exc:
        raise RunError(f"the plugins could not be loaded: {exc}") from None
    except WorkerFailure as exc:
        raise RunError(f"the worker failed while listing implementations: {exc.reason}") from None
    return Catalog.from_description(answer["describe"])


def declared_support(decl: dict[str, Any], case: Case) -> bool:
    """Whether an implementation's declaration admits a case (device, dtype, features, required
    features): plugins join the grids of a shipped suite only where they say they can run."""
    declared = {k: decl.get(k) or [] for k in ("devices", "dtypes", "features", "requires")}
    return unmet(case, **declared) is None


class Runner:
    """Runs a suite into an output folder with the implementations a :class:`Catalog` declares."""

    def __init__(
        self,
        suite: Suite,
        catalog: Catalog,
        out_dir: Path | None = None,
        *,
        plugins: list[str] | None = None,
        only: list[str] | None = None,
        resume: bool = False,
        progress: bool = True,
        pool: WorkerPool | None = None,
        executor: Executor | None = None,
        shard: shards.Shard | None = None,
        paired: bool = True,
        started_at: float | None = None,
        max_minutes: float | None = None,
    ) -> None:
        self.started_at = started_at  # time.perf_counter() when the command began (its cost counts from there)
        self.max_minutes = max_minutes  # the plan's limit: pairs expected past it are skipped (see decide)
        self.forecast: estimate.Forecast | None = None
        self.sweep_started = 0.0
        self.limit_s = float("inf")  # seconds of sweep the plan may spend
        self.suite = suite
        self.paired = paired
        self.catalog = catalog
        self.plugins = [str(Path(p).resolve()) for p in (plugins or [])]
        self.machine = machine_info()
        self.out_dir = out_dir or default_out_dir(suite.name, self.machine["id"])
        self.resume = resume
        self.show_progress = progress
        self.pool = pool or WorkerPool(self.plugins)
        self.executor = executor or LocalExecutor(self.plugins, self.pool)
        self.devices = list(self.executor.devices())
        brought = [n for n, d in catalog.declarations.items() if d.get("source") != "built-in"]
        self.extra = brought if suite.shipped else []  # plugins join the grids of attnbench's own suites
        self.impls = self._select(only)
        admits = {n: functools.partial(declared_support, catalog.get(n)) for n in self.extra}
        pairs = suite.pairs(catalog.known(), self.devices, extra=self.extra, admits=admits)
        self.pairs = [(c, catalog.canonical(i)) for c, i in pairs if catalog.canonical(i) in self.impls]
        if shard is None and resume:  # a shard's folder resumes as that shard
            shard = shards.Shard.from_dict(self._folder_info().get("shard"))
        self.shard = shard
        self.plan = shards.plan(self.pairs, self.shard.count, suite.budget) if self.shard else None
        if self.shard:
            self.pairs = self.shard.select(self.pairs, suite.budget)
        self.cases = list(dict.fromkeys(case for case, _ in self.pairs))
        self.baselines = suite.baselines(self.devices)
        self.unavailable: dict[tuple[str, str], str] = {}

    @property
    def budget(self) -> dict[str, float]:
        """The suite's budget (what an executor's tasks run under)."""
        return self.suite.budget

    def _select(self, only: list[str] | None) -> list[str]:
        names = [self.catalog.canonical(n) for n in self.suite.impl_names(self.catalog.known())]
        names = list(dict.fromkeys([*names, *self.extra]))
        for name in names:
            self.catalog.get(name)  # unknown names raise with "did you mean"
        if only:
            wanted = []
            for name in only:
                self.catalog.get(name)
                canonical = self.catalog.canonical(name)
                if canonical not in names:
                    raise RunError(f"--only {name}: not in suite {self.suite.name!r} (it has {', '.join(names)})")
                wanted.append(canonical)
            names = [n for n in names if n in wanted]
        return names

    # -- the run folder ----------------------------------------------------------------------

    def _folder_info(self) -> dict[str, Any]:
        return read_run_json(self.out_dir)

    def _prepare_folder(self) -> dict[str, Any]:
        results = self.out_dir / "results.jsonl"
        if self.resume:
            info = self._folder_info()
            given = info["suite"].get("text")
            if given is not None and suite_hash(given) != suite_hash(self.suite.text):
                started = info["suite"].get("name")
                what = (
                    f"suite {started!r} as it was then: its file has changed since"
                    if started == self.suite.name
                    else f"suite {started!r}, not {self.suite.name!r} as given"
                )
                raise RunError(
                    f"--resume: {self.out_dir} was started with {what} ({info['suite'].get('path')}); resume it"
                    " without naming a suite (the run keeps the suite it started with), or choose another --out"
                )
            if shards.Shard.from_dict(info.get("shard")) != self.shard:
                held = shards.Shard.from_dict(info.get("shard"))
                raise RunError(
                    f"--resume: {self.out_dir} holds {f'shard {held}' if held else 'the whole suite'}, not"
                    f" {f'shard {self.shard}' if self.shard else 'the whole suite'}; resume it without --shard"
                )
            info.setdefault("resumed", []).append(now())
            info.setdefault("resumed_git_commits", []).append(git_commit())  # the code that finished it
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
            "suite": {
                "name": self.suite.name,
                "path": self.suite.path,
                "text": self.suite.text,
                "hash": suite_hash(self.suite.text),
                **self.suite.raw,
            },
            "machine": self.machine,
            "versions": versions(),
            "calibration": [],
            "implementations": [self.catalog.get(n) for n in self.impls],
            "aliases": self.catalog.aliases,
            "executor": self.executor.describe(),
            "shard": self.shard.as_dict() if self.shard else None,
            **({"plan": self.plan} if self.plan is not None else {}),
        }

    def _write_info(self, info: dict[str, Any]) -> None:
        tmp = self.out_dir / "run.json.tmp"
        tmp.write_text(json.dumps(info, indent=2, default=str))
        os.replace(tmp, self.out_dir / "run.json")

    # -- the sweep ---------------------------------------------------------------------------

    def run(self) -> Path:
        """Run every missing pair; returns the output folder."""
        from attnbench.sweep.progress import SweepProgress

        info = self._prepare_folder()
        self._write_info(info)
        self.executor.set_log(self.out_dir / "workers.log")
        existing = read_records(self.out_dir / "results.jsonl")
        done = {record_key(r) for r in existing}
        failures = Failures()
        for row in existing:
            failures.add(row)
        total = len(self.pairs)
        todo = [(case, impl) for case, impl in self.pairs if record_key({"impl": impl, **case.fields()}) not in done]
        session_started = time.perf_counter()
        begun = self.started_at if self.started_at is not None else session_started
        starts_before = self.executor_start_s()
        written: list[dict[str, Any]] = []
        with _terminate_on_signals(self.executor), RecordWriter(self.out_dir / "results.jsonl") as writer:
            try:
                self.executor.prepare(self, info)
                calibration_s = time.perf_counter() - session_started
                self._plan(todo, info, begun)
                self._write_info(info)
                with SweepProgress(total, done=len(done) if self.show_progress else 0) as progress:

                    def emit(case: Case, impl: str, record: Record) -> None:
                        record.suite, record.machine = self.suite.name, self.machine["id"]
                        writer.write(record)
                        written.append({"cost_s": record.cost_s})
                        failures.add(record.as_dict())
                        if record.status == Status.UNAVAILABLE:
                            self.unavailable[(impl, case.device)] = record.reason
                        if self.forecast is not None:
                            ran = record.status not in (Status.UNAVAILABLE, Status.UNSUPPORTED, Status.SKIPPED)
                            key = record_key(record.as_dict())
                            self.forecast.finish(key, record.elapsed_s, record.time_ms, ran)
                            elapsed = time.perf_counter() - self.sweep_started
                            # under a limit, the pairs expected past it are skipped: never more than it leaves
                            left = self.forecast.seconds_left()
                            progress.left_s = max(0.0, min(left, self.limit_s - elapsed))
                        progress.finish(case.label(), record.as_dict())

                    def started(case: Case, impl: str) -> None:
                        progress.start(case.label(), impl)

                    save = functools.partial(self._write_info, info)
                    self.executor.sweep(Sweep(self, todo, failures, info, emit, started, save))
                    print(progress.summary(), flush=True)
                paired_started = time.perf_counter()
                self.pair_ratios()
                paired_s = time.perf_counter() - paired_started
                session = cost.summarize(
                    written, wall_s=time.perf_counter() - begun, start_s=session_started - begun,
                    calibration_s=calibration_s, paired_s=paired_s,
                    worker_start_s=self.executor_start_s() - starts_before,
                )  # fmt: skip
                info.setdefault("cost", []).append(session)
            finally:
                self.executor.close()
                info["ended"] = now()
                self._write_info(info)
        return self.out_dir

    def _plan(self, todo: list[tuple[Case, str]], info: dict[str, Any], begun: float) -> None:
        """Predict the sweep (:mod:`attnbench.sweep.estimate`), say so, and set its limit."""
        known = estimate.history(self.out_dir.parent, self.machine["id"], exclude=self.out_dir)
        ceilings = estimate.ceilings_of(info.get("calibration") or [])
        predicted = estimate.plan_seconds(todo, self.suite.budget, ceilings, known)
        for i, (_, impl) in enumerate(todo):
            if not self.catalog.get(impl).get("available", True):
                predicted[i] = 0.0  # recorded unavailable without a worker
        growth = {impl: self.catalog.get(impl).get("time_growth") for impl in {impl for _, impl in todo}}
        self.forecast = estimate.Forecast.of(todo, predicted, self.suite.budget, growth)
        self.sweep_started = time.perf_counter()
        expected = sum(predicted)
        measured = sum(1 for case, impl in todo if record_key({"impl": impl, **case.fields()}) in known)
        how = f"{measured} of them timed here before" if measured else "from this machine's calibration"
        line = f"plan: {len(todo)} pairs to run, expected to take about {estimate.duration(expected)} ({how})"
        if self.max_minutes:
            # the sweep ends 5% before the limit, leaving the rest for the paired timings and the report
            self.limit_s = 0.95 * self.max_minutes * 60 - (self.sweep_started - begun)
            if expected > self.limit_s:
                line += f"; --max-minutes {self.max_minutes:g}: the largest sizes will be skipped to fit"
        plan = {"pairs": len(todo), "expected_s": expected, "max_minutes": self.max_minutes}
        info.setdefault("plans", []).append(plan)
        if self.show_progress:
            print(line, flush=True)

    def executor_start_s(self) -> float:
        """Seconds spent starting worker processes (the local executor's pools, and the pool that
        listed the plugins)."""
        pools = list(getattr(self.executor, "pools", {}).values())
        return sum(p.start_s for p in {id(p): p for p in [*pools, self.pool]}.values())

    def pair_ratios(self) -> None:
        """The paired timings after the sweep (:func:`attnbench.sweep.pairs.for_run`), on the local
        executor only (a Ray run keeps its records' figures), unless ``paired`` is off."""
        if not self.paired or not isinstance(self.executor, LocalExecutor):
            return
        declared = {n: self.catalog.declarations.get(n, {}) for n in self.impls}
        ratios, claimed = pairs.for_run(self.suite.ratios, declared, sharded=self.shard is not None)
        if ratios or claimed:
            budget, show = self.suite.budget, self.show_progress
            pairs.run_pairs(self.out_dir, ratios, budget, self.executor.pool_for, show, claimed)

    def calibrate(self, info: dict[str, Any], pool_for: Callable[[str], WorkerPool] | None = None) -> None:
        """Measure the matmul peak and bandwidth of each (device, dtype, threads) of the sweep
        that this host has not measured yet, each on ``pool_for(device)`` (default: the pool)."""
        wanted = {(c.device, c.dtype, c.threads) for c in self.cases if c.device in self.devices}
        host, torch_version = self.machine["hostname"], versions().get("torch")
        calibrate_run(info, host, torch_version, wanted, pool_for or (lambda where: self.pool), now)

    def decide(self, case: Case, name: str, failures: Failures) -> Record | None:
        """The record of a pair settled without a worker — no such device here, the
        implementation already unavailable on it, a smaller size already over its budget — or
        None when a worker has to run it."""
        fields = case.fields()
        where = case.device

        def outcome(status: str, reason: str, step: str = "") -> Record:
            return Record(impl=name, status=status, reason=reason, step=step, case=fields)

        if where not in self.devices:
            return outcome(Status.UNAVAILABLE, f"no {where} device on this machine", steps.AVAILABILITY)
        if (name, where) in self.unavailable:
            return outcome(Status.UNAVAILABLE, self.unavailable[(name, where)], steps.AVAILABILITY)
        if self.suite.stop_on_failure:
            row = {"impl": name, **fields}
            growth = self.catalog.get(name).get("time_growth")
            if why := failures.blocking(row) or failures.predicted(row, growth, self.suite.budget):
                return outcome(Status.SKIPPED, why)
        if self.forecast is not None and self.limit_s < float("inf"):
            elapsed = time.perf_counter() - self.sweep_started
            expected = self.forecast.over(record_key({"impl": name, **fields}), self.limit_s - elapsed)
            if expected is not None:
                why = (f"not run: expected {expected:.0f} s, and the plan's --max-minutes {self.max_minutes:g} leaves"
                       f" {max(0.0, self.limit_s - elapsed):.0f} s of sweep for the pairs left")  # fmt: skip
                return outcome(Status.SKIPPED, why)
        return None

    def job(self, case: Case, name: str, calibration: list[dict[str, Any]], failures: Failures) -> dict[str, Any]:
        """The worker's job for a pair, with this host's calibration of its device; without its
        baseline where that ran past its budget or crashed beside an earlier pair
        (:meth:`Failures.baseline_gone`)."""
        key = (case.device, case.dtype, case.threads)
        host = self.machine["hostname"]
        found = [c for c in calibration if (c["device"], c["dtype"], c["requested_threads"]) == key]
        cal = next((c for c in found if c.get("host", host) == host), found[0] if found else {})
        job: dict[str, Any] = {
            "op": "case", "case": case.fields(), "impl": name, "baseline": self.baseline_of(case),
            "budget": self.suite.budget, "calibration": {k: cal.get(k) for k in CALIBRATION_KEYS},
        }  # fmt: skip
        baseline, row = str(job["baseline"]), {"impl": name, **case.fields()}
        if baseline and baseline != name and (gone := failures.baseline_gone(row, baseline)):
            job["baseline"], job["baseline_note"] = "", gone
        return job

    def baseline_of(self, case: Case) -> str:
        name = self.baselines.get(case, self.suite.baseline)
        return self.catalog.canonical(name) if name else ""

    def run_pair(
        self, case: Case, name: str, failures: Failures, calibration: list[dict[str, Any]], pool: WorkerPool
    ) -> Record:
        """One pair's record: settled here, or run on a worker of ``pool``."""
        decided = self.decide(case, name, failures)
        return decided or run_job(pool, self.job(case, name, calibration, failures), self.suite.budget)


@contextlib.contextmanager
def _terminate_on_signals(executor: Executor) -> Iterator[None]:
    """On SIGTERM, kill the workers and leave through the normal exit path (records are flushed)."""

    def handler(signum: int, frame: object) -> None:
        executor.close()
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
