"""The interface between the runner and the executors, defined below both: what an executor is
given (:class:`Sweep`, the :class:`Planner` it asks), what it is (:class:`Executor`), the sizes
that already failed their budget (:class:`Failures`), and one pair's job run on a worker with its
record made (:func:`run_job`), wherever that worker runs (here, or in a Ray task).

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from attnbench.case.keys import CASE_KEYS
from attnbench.case.status import BUDGET_FAILURES, Status
from attnbench.measure import steps
from attnbench.measure.records import Record
from attnbench.sweep.estimate import grown_call
from attnbench.sweep.workers import Budgets, WorkerDied, WorkerFailure, WorkerPool, WorkerStartError, WorkerTimeout

if TYPE_CHECKING:
    from attnbench.case.problem import Problem


class ExecutorError(Exception):
    """An executor that cannot start (Ray not installed, no cluster at the address): one sentence."""


#: A pair predicted to spend more than this many times its timeout is not run (:meth:`Failures.predicted`).
PREDICTION_MARGIN = 2.0
#: How the note of a pair whose baseline ran past its budget or crashed the worker ends
#: (:func:`run_job`); :class:`Failures` reads it to spare the next pairs the same wait.
TIMED_ALONE = "; the implementation was timed alone"


@dataclass
class Failures:
    """Sizes at which an implementation failed its budget, per case group: a larger size of the
    same group is skipped rather than run into the same wall. And the call times measured per
    group, so that a larger size whose time, grown as the implementation declares, would certainly
    exceed its budget is skipped with the prediction instead of costing a whole timeout."""

    seen: dict[tuple[Any, ...], list[tuple[int, int, str]]] = field(default_factory=dict)
    timed: dict[tuple[Any, ...], list[tuple[int, int, float]]] = field(default_factory=dict)
    #: Where a baseline ran past its budget or crashed the worker beside some implementation:
    #: per the baseline's group, ``(seq_len, kv_len, what happened)``.
    baselines: dict[tuple[Any, ...], list[tuple[int, int, str]]] = field(default_factory=dict)

    @staticmethod
    def group(row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row.get(k) for k in ("impl", *CASE_KEYS) if k not in ("seq_len", "kv_len"))

    def add(self, row: dict[str, Any]) -> None:
        if row["status"] in BUDGET_FAILURES:
            self.seen.setdefault(self.group(row), []).append((row["seq_len"], row["kv_len"], row["status"]))
        elif row.get("time_ms"):
            self.timed.setdefault(self.group(row), []).append((row["seq_len"], row["kv_len"], float(row["time_ms"])))
        note = str(row.get("baseline_note") or "")
        if note.startswith("baseline ") and note.endswith(TIMED_ALONE):  # written by run_job below
            name, _, what = note.removeprefix("baseline ").removesuffix(TIMED_ALONE).partition(" ")
            if name and what:
                group = self.group({**row, "impl": name})
                self.baselines.setdefault(group, []).append((row["seq_len"], row["kv_len"], what))

    def baseline_gone(self, row: dict[str, Any], baseline: str) -> str | None:
        """Why ``baseline`` is not run beside the pair ``row``: it ran past its budget or crashed
        the worker beside another implementation at this size or a smaller one of its group, and
        would cost this pair the same wait (its whole budget, each time). None: run it."""
        for n, nk, what in self.baselines.get(self.group({**row, "impl": baseline}), []):
            if row["seq_len"] >= n and row["kv_len"] >= nk:
                return (
                    f"baseline {baseline} not run: it {what} at seq_len {n}, kv_len {nk} beside another"
                    " implementation; the implementation was timed alone, without a speedup"
                )
        return None

    def blocking(self, row: dict[str, Any]) -> str | None:
        for n, nk, status in self.seen.get(self.group(row), []):
            if row["seq_len"] >= n and row["kv_len"] >= nk:
                return f"a smaller size (seq_len {n}, kv_len {nk}) already ended as {status}"
        return None

    def predicted(self, row: dict[str, Any], time_growth: float | None, budget: dict[str, float]) -> str | None:
        """Why a pair is not run: its call predicted from the largest smaller size of its group
        measured so far, grown as the implementation declares (:func:`~attnbench.sweep.estimate.
        grown_call`), times the calls its budget must hold at least (a first call, the timing's
        sizing call and ``min_repeats`` samples, and the judged call, which is also the memory
        pass), is over :data:`PREDICTION_MARGIN` times its timeout. None: run it."""
        found = grown_call(self.timed.get(self.group(row), []), row["seq_len"], row["kv_len"], time_growth)
        if found is None:
            return None
        (n, nk, ms), call_s = found
        call_s /= 1e3
        calls = int(budget.get("min_repeats", 5)) + 4
        if calls * call_s <= PREDICTION_MARGIN * budget["timeout_s"]:
            return None
        return (
            f"predicted {calls * call_s:.0f} s ({calls} calls of {call_s:.1f} s: {ms:.1f} ms measured at seq_len {n},"
            f" kv_len {nk}, grown as N^{time_growth:g}), over {PREDICTION_MARGIN:g}x its {budget['timeout_s']:g} s"
            " timeout; not run"
        )


class Planner(Protocol):
    """What an executor asks of the runner: the suite's budget and plugins, the folder, and the
    record of a pair settled without a worker (:meth:`decide`), a pair's worker job (:meth:`job`),
    a pair run on a local pool (:meth:`run_pair`), the calibration (:meth:`calibrate`)."""

    plugins: list[str]
    out_dir: Path

    @property
    def budget(self) -> dict[str, float]: ...

    def decide(self, case: Problem, name: str, failures: Failures) -> Record | None: ...

    def job(
        self, case: Problem, name: str, calibration: list[dict[str, Any]], failures: Failures
    ) -> dict[str, Any]: ...

    def run_pair(
        self, case: Problem, name: str, failures: Failures, calibration: list[dict[str, Any]], pool: WorkerPool
    ) -> Record: ...

    def calibrate(self, info: dict[str, Any], pool_for: Callable[[str], WorkerPool] | None = None) -> None: ...


@dataclass
class Sweep:
    """What an executor is given to run: the runner it asks (:class:`Planner`), the pairs still to
    run in the suite's order, what failed so far, ``run.json`` as a dict, and three callbacks for
    the runner's thread: ``emit`` a record (written at once), ``started`` a pair, ``save_info``
    after changing ``info``."""

    runner: Planner
    todo: list[tuple[Problem, str]]
    failures: Failures
    info: dict[str, Any]
    emit: Callable[[Problem, str, Record], None]
    started: Callable[[Problem, str], None]
    save_info: Callable[[], None]


class Executor(Protocol):
    """Runs the pairs of a sweep somewhere."""

    name: str

    def devices(self) -> list[str]:
        """The devices pairs may run on (what ``auto`` and ``cuda:all`` expand to)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What ``run.json`` keeps of it (its name, the cluster's nodes)."""
        ...

    def set_log(self, path: Path) -> None:
        """Workers started here write their output to ``path``."""
        ...

    def prepare(self, runner: Planner, info: dict[str, Any]) -> None:
        """Work before the first pair (the calibration, where it is measured up front)."""
        ...

    def sweep(self, sweep: Sweep) -> None:
        """Run every pair of ``sweep.todo``, emitting each one's record on the calling thread."""
        ...

    def close(self) -> None:
        """Stop everything still running (also from a signal handler)."""
        ...


def run_job(pool: WorkerPool, job: dict[str, Any], budget: dict[str, float]) -> Record:
    """Send one case job to ``pool`` and make its record; a failure in a step the implementation
    does not own is not its status. Runs wherever the worker runs (here, or in a Ray task)."""

    def outcome(status: str, reason: str, step: str = "") -> Record:
        return Record(impl=job["impl"], status=status, reason=reason, step=step, case=job["case"])

    plan = Budgets(budget["timeout_s"], extra_s=budget["max_time_s"])
    try:
        answer = pool.request(job, plan)
    except WorkerStartError as exc:
        return outcome(Status.ERROR, f"the worker could not start: {exc}", steps.LOAD)
    except WorkerFailure as exc:
        what = "ran past its budget" if isinstance(exc, WorkerTimeout) else f"crashed the worker ({exc.reason})"
        owner = steps.owner(exc.step)
        if owner == "baseline" or (owner == "timing" and exc.callee == "baseline"):
            during = " during the interleaved timing" if owner == "timing" else ""
            retry = {**job, "baseline": "", "baseline_note": f"baseline {job['baseline']} {what}{during}{TIMED_ALONE}"}
            return run_job(pool, retry, budget)
        if owner == "reference" and exc.partial is not None:
            record = Record.from_dict(exc.partial)
            if exc.step == steps.OWN_REFERENCE:  # the verdicts were reached and sent before it ran
                record.step = exc.step
                note = f"its own reference() {what}; not compared (the verdict stands: judged against the case)"
            else:
                if record.status == Status.OK:
                    record.status = Status.UNCHECKED
                judge = "the float64 reference" if record.exact is not False else "its own reference()"
                note = f"accuracy not checked: {judge} {what}"
            record.check_note = "; ".join(n for n in (record.check_note, note) if n)
            return record
        if isinstance(exc, WorkerTimeout):
            why = f"did not finish within {budget['timeout_s']:g} s; its worker was killed"
            return outcome(Status.TIMEOUT, why, exc.step)
        assert isinstance(exc, WorkerDied)
        return outcome(Status.CRASHED, exc.reason, exc.step)
    if "fatal" in answer:
        return outcome(Status.ERROR, answer["fatal"], "")
    return Record.from_dict(answer["record"])
