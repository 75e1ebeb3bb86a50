"""Measure one (case, implementation) inside a worker, step by step (:mod:`attnbench.measure.steps`).

1. *load*, *availability*, *supports*, *memory estimate*: the implementation's declarations,
   asked here (in the worker) so that no plugin code runs in the runner;
2. *baseline*: the baseline's set-up and a first call, under its own budget;
3. *prepare*: the implementation's set-up (compilation, masks), outside the timing;
4. *first call*: the mode's bench (:class:`attnbench.measure.bench.Bench`) is built and called once
   on the inputs scrambled in place (the warm-up; a wrong output shape is found here);
5. *timing*: the implementation, the baseline and the machine probe interleaved, still on the
   scrambled inputs; the worker tells the runner whenever a baseline call starts and ends, so a
   baseline that hangs or crashes there is the baseline's failure;
6. *accuracy check*: the inputs restored, one more call through the same bench on the same
   tensors, its sampled rows kept (and in modes with gradients its backward pass): the call that
   is judged is the call that was timed. That call is also the memory pass: its peak memory is
   measured (:mod:`attnbench.measure.memory`), so no call is made for the memory alone;
7. *reference*: the float64 reference and the verdicts, with the implementation's memory cap
   lifted and under a budget of its own; a record that is complete but for this step is sent to
   the runner first, so a failure here leaves the record ``unchecked``, never without its
   measurement; the verdicts are sent as soon as they exist;
8. *own reference*: for an exact implementation with a ``reference()`` of its own, whether that
   is the case's function. It runs after the verdicts were sent, so whatever it does (differs,
   raises, runs out of memory, kills the worker) adds a note and never changes the verdict.
   Exceptions in the implementation's steps become records (``error``, ``oom``) with the step.

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""

from __future__ import annotations

import gc
import os
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from attnbench.case.keys import problem_of
from attnbench.case.status import Status
from attnbench.case.work import dense_flops
from attnbench.measure import fidelity, figures, steps
from attnbench.measure.bench import Outputs, bench, judged_call, prepare, prepare_timed
from attnbench.measure.calibrate import GemmProbe, StreamProbe
from attnbench.measure.devices import device
from attnbench.measure.machine_load import LoadMeter
from attnbench.measure.memory import vm_size_bytes
from attnbench.measure.records import TIMED_BASELINE, TIMED_IMPL, TIMED_PROBE, Record
from attnbench.measure.timing import measure
from attnbench.measure.verify import CheckResult, check_rows, compare_own_reference, judge
from attnbench.plugins.contract import ADAPTER, Implementation
from attnbench.plugins.registry import BrokenPlugin, Registry

Tensor = torch.Tensor
Report = Callable[[dict[str, Any]], None]
OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "std::bad_alloc")


def classify(exc: BaseException) -> tuple[str, str]:
    """``(status, reason)`` for an exception raised by an implementation."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    lowered = text.lower()
    is_oom = isinstance(exc, MemoryError | torch.OutOfMemoryError) or any(m in lowered for m in OOM_MARKERS)
    return (Status.OOM if is_oom else Status.ERROR), text[:4000]


class Stop(Exception):
    """The record is complete before the timing (unavailable, unsupported, predicted oom)."""


class CaseRun:
    """One job in the worker: the record as it fills, and the step it is in."""

    def __init__(self, registry: Registry, job: dict[str, Any], set_cap: Callable[[int | None], None], report: Report):
        self.registry = registry
        self.job = job
        self.budget = job["budget"]
        self.problem = problem_of(job["case"])
        self.device = device(self.problem.device)
        self.set_cap = set_cap
        self.report = report
        self.record = Record(impl=job["impl"], status=Status.OK, case=job["case"])
        self.record.worker_pid = os.getpid()
        self.record.host = socket.gethostname()
        self._since = 0.0  # when the current step began

    def enter(self, step: str) -> None:
        self._account()
        self.record.step = step
        self.report({"phase": step})

    def _account(self) -> None:
        """Add the time since the last step began to that step's cost."""
        now = time.perf_counter()
        if self.record.step:
            cost = self.record.cost_s
            cost[self.record.step] = cost.get(self.record.step, 0.0) + now - self._since
        self._since = now

    def stop(self, status: str, reason: str) -> None:
        self.record.status, self.record.reason = status, reason  # type: ignore[assignment]
        raise Stop

    def run(self) -> bool:
        """Fill the record; returns False when the worker should be replaced."""
        started = self._since = time.perf_counter()
        self.record.threads_used = self.device.set_threads(int(self.job["case"]["threads"]))
        healthy = True
        if self.device.present():
            self.device.activate()
            self.record.device_name = self.device.describe()
        try:
            impl = self.declared()
            base_call, inputs = self.baseline()
            self.measure(impl, base_call, inputs)
            if self.record.status != Status.UNCHECKED:  # an unchecked record ended where its reference failed
                self._account()
                self.record.step = steps.DONE
        except Stop:
            pass
        except BaseException as exc:
            self.record.status, self.record.reason = classify(exc)  # type: ignore[assignment]
            healthy = False
        finally:
            self.set_cap(None)
            gc.collect()
            self._account()
        self.record.elapsed_s = time.perf_counter() - started
        return healthy

    def declared(self) -> Implementation:
        self.enter(steps.LOAD)
        impl = self.registry.get(self.job["impl"])
        self.record.exact = impl.exact
        self.enter(steps.AVAILABILITY)
        avail = impl.available()
        if isinstance(impl, BrokenPlugin) or not avail.ok:
            self.stop(Status.UNAVAILABLE, avail.reason)
        if not self.device.present():
            self.stop(Status.UNAVAILABLE, f"no {self.problem.device} device on this machine")
        self.enter(steps.SUPPORTS)
        unsupported = impl.supports(self.problem)
        if unsupported:
            self.stop(Status.UNSUPPORTED, unsupported)
        self.enter(steps.ESTIMATE)
        estimate = impl.memory_estimate(self.problem)
        limit = self.budget["memory_gib"] * 2**30
        if estimate is not None and estimate > limit:
            self.stop(
                Status.OOM,
                f"declares {estimate / 2**30:.1f} GiB beyond the inputs for this case, over the"
                f" {self.budget['memory_gib']:g} GiB budget; not started",
            )
        return impl

    def baseline(self) -> tuple[Callable[[], object] | None, Any]:
        """The inputs, and the baseline's timed call (None, with a note, when there is none)."""
        inputs = self.problem.kind.make_inputs(self.problem)  # q, k, v (or a decode step's inputs)
        name = self.job.get("baseline") or ""
        if self.job.get("baseline_note"):
            self.record.baseline_note = self.job["baseline_note"]
        if name and name == self.job["impl"]:
            self.record.baseline = name  # the baseline itself: 1× by definition
        if not name or name == self.job["impl"]:
            return None, inputs
        self.enter(steps.BASELINE)
        started = time.perf_counter()
        self.cap()
        try:
            base = self.registry.get(name)
            avail = base.available()
            if not avail.ok:
                raise RuntimeError(f"unavailable: {avail.reason}")
            reason = base.supports(self.problem)
            if reason:
                raise RuntimeError(f"does not support this case: {reason}")
            call = bench(prepare(base, self.problem, inputs), self.problem, inputs).call
            call()  # warm-up: fails here, not inside the timing loop
            self.baseline_first_ms = self.device.clock().time(call)
            self.baseline_spent_s = time.perf_counter() - started
            return call, inputs
        except Exception as exc:
            self.record.baseline_note = f"baseline {name} {_short(exc)}"
            return None, inputs

    def cap(self) -> None:
        """The memory budget from here on: what the process holds now plus ``memory_gib``."""
        if not self.device.is_gpu:
            allowance = int(self.budget["memory_gib"] * 2**30)
            self.cap_limit = vm_size_bytes() + allowance
            self.set_cap(allowance)

    def widen_cap(self, harness_bytes: int) -> None:
        """Raise the budget by what the harness itself just allocated (the machine probe), so
        that its buffers are never counted against the implementation."""
        if self.cap_limit is not None and harness_bytes > 0:
            self.cap_limit += harness_bytes
            self.set_cap(max(0, self.cap_limit - vm_size_bytes()))

    cap_limit: int | None = None

    def measure(self, impl: Implementation, base_call: Callable[[], object] | None, inputs: Any) -> None:
        problem, record = self.problem, self.record
        self.cap()
        self.enter(steps.PREPARE)
        fn, record.setup_s = prepare_timed(impl, problem, inputs)
        if problem.kind.reads_cache and "decode" not in impl.features:
            record.adapter = ADAPTER
        self.enter(steps.FIRST_CALL)
        judged = bench(fn, problem, inputs)
        judged.scramble()  # timed on other values of the same distribution; judged on the seeded ones
        judged.first()
        self.device.synchronize()
        self.enter(steps.TIMING)
        self.time(judged.call, base_call)
        del base_call
        judged.restore()
        gc.collect()
        self.enter(steps.CHECK)
        rows = check_rows(problem, int(self.budget["accuracy_rows"]))
        got, record.peak_mem_bytes, unmeasured = judged_call(judged, rows, self.device.peak_bytes)
        if unmeasured:
            record.check_note = _join(record.check_note, f"memory not measured: {unmeasured}")
        self.device.synchronize()
        self.work(impl)
        self.set_cap(None)
        del judged
        gc.collect()
        self.report({"partial": record.as_dict()})
        self.enter(steps.REFERENCE)
        result = self.reference(impl, inputs, got, rows)
        if result is not None:
            self.own_reference(impl, result)
        self.fidelity(fn, inputs, got, rows)

    def time(self, call: Callable[[], object], base_call: Callable[[], object] | None) -> None:
        record, budget = self.record, self.budget
        probe = self.probe()
        if probe is not None:
            self.widen_cap(probe[3])
        meter = LoadMeter()
        meter.start()
        timing = measure(
            call,
            base_call,
            self.device.clock(),
            on_switch=lambda callee: self.report({"callee": callee}),
            probe=probe[1] if probe else None,
            min_time_s=budget["min_time_s"],
            max_time_s=budget["max_time_s"],
            min_repeats=int(budget["min_repeats"]),
            baseline_budget_s=budget["timeout_s"],
            baseline_first_ms=self.baseline_first_ms,
            baseline_spent_s=self.baseline_spent_s,
            probe_budget_s=budget["max_time_s"] / 2,
            warmup=0,  # the bench's first call warmed it up
        )
        record.machine_load = meter.stop()
        record.cost_s[TIMED_IMPL] = timing.impl.sampled_s
        record.cost_s[TIMED_BASELINE] = timing.baseline.sampled_s if timing.baseline is not None else 0.0
        record.cost_s[TIMED_PROBE] = timing.probe.sampled_s if timing.probe is not None else 0.0
        record.samples_ms = timing.impl.ms
        record.inner = timing.impl.inner
        record.unstable = timing.unstable
        record.update(figures.timing(timing.impl.ms, [], ok=True))
        if timing.baseline_error:
            record.baseline_note = (
                f"baseline {self.job['baseline']} failed during the interleaved timing ({timing.baseline_error});"
                " the implementation's samples are its own"
            )
        elif base_call is not None and timing.baseline is None:
            record.baseline_note = f"baseline {self.job['baseline']}: no sample fitted in its own budget"
        if timing.baseline is not None:
            record.baseline = self.job["baseline"]
            record.baseline_samples_ms = timing.baseline.ms
            record.update(figures.timing(timing.impl.ms, timing.baseline.ms, ok=True))
        if probe is not None and timing.probe is not None:
            record.machine_probe, record.machine_probe_ms = probe[0], timing.probe.ms
            record.machine_probe_work = probe[2]
            self.probe_rate = figures.probe_rate(timing.probe.ms, probe[2])

    def probe(self) -> tuple[str, Callable[[], object], float, int] | None:
        """``(label, call, work per call, bytes it holds)`` of the machine probe for this case, or None."""
        cal = self.job.get("calibration") or {}
        if self.problem.kind.memory_bound:
            stream = StreamProbe.moving(self.problem.device, self.problem.kind.io_bytes(self.problem))
            return stream.label, stream.build(), stream.bytes, stream.footprint
        if not cal.get("probe_dtype"):
            return None
        gemm = GemmProbe(self.problem.device, str(cal["probe_dtype"]), int(cal["probe_n"]))
        return gemm.label, gemm.build(), gemm.flops, gemm.footprint

    probe_rate: float | None = None
    baseline_first_ms: float | None = None
    baseline_spent_s: float = 0.0

    def work(self, impl: Implementation) -> None:
        """FLOPs and bytes, the rates, and the ceilings they are set against: the larger of the
        run's calibration and the probe timed beside this case (:mod:`attnbench.measure.figures`)."""
        record, problem = self.record, self.problem
        done = impl.work(problem)
        record.flops, record.bytes = done.flops, done.bytes
        record.flops_counted = done.counted
        record.dense_flops = dense_flops(problem)
        record.update(
            figures.rates(
                time_ms=record.time_ms,
                flops=done.flops,
                bytes_moved=done.bytes,
                mode=problem.mode,
                batch=problem.batch,
                seq_len=problem.seq_len,
                calibration=self.job.get("calibration") or {},
                probe=self.probe_rate,
            )
        )

    def reference(self, impl: Implementation, inputs: Any, got: Outputs, rows: Tensor) -> CheckResult | None:
        """The harness's verdicts; sent to the runner as soon as they exist. A reference that
        fails leaves the record ``unchecked`` (never ranked), with the reason."""
        record = self.record
        try:
            result = judge(impl, self.problem, inputs, got, rows)
        except Exception as exc:
            record.status = Status.UNCHECKED
            which = "the float64 reference" if impl.exact else "its own reference()"
            record.check_note = _join(record.check_note, f"accuracy not checked: {which} {_short(exc)}")
            return None
        out = result.output
        record.checks = result.checks
        record.check_figures = result.figures()
        record.max_abs_err, record.rel_err, record.accuracy_bound = out.max_abs_err, out.rel_err, out.bound
        record.accuracy_plain_err = out.plain_err
        record.accuracy_rows = result.rows
        record.full_max_abs_err, record.full_rel_err = result.full_max_abs_err, result.full_rel_err
        record.uniform_rel_err = result.uniform_rel_err
        record.check_note = _join(record.check_note, result.note)
        if not result.ok:
            record.status, record.reason = Status.INACCURATE, result.failures()
            record.speedup = None  # a wrong answer's time is no evidence of speed
        self.report({"partial": record.as_dict()})  # the verdicts reach the runner before any plugin code runs again
        return result

    def own_reference(self, impl: Implementation, result: CheckResult) -> None:
        """An exact implementation's own ``reference()`` against the case's function: a note only."""
        if not impl.exact or not impl.own_reference:
            return
        self.enter(steps.OWN_REFERENCE)
        record = self.record
        try:
            note = compare_own_reference(impl, result)
        except Exception as exc:
            note = f"its own reference() could not be compared: {_short(exc)}"
        record.own_reference_differs = result.own_reference_differs
        record.check_note = _join(record.check_note, note)

    def fidelity(self, fn: Callable[..., Tensor], inputs: Any, got: Outputs, rows: Tensor) -> None:
        """On a probe: the share of the planted targets the output recovers, and (short cases)
        the effective attention matrix, against unrestricted softmax attention."""
        record, problem = self.record, self.problem
        if problem.probe == "random" or problem.kind.reads_cache:
            return
        q, k, v = inputs
        try:
            found = fidelity.measure(got.out, q, k, v, problem, rows)
            if found is not None:
                record.probe_mass, record.recovered = found.probe_mass, found.recovered
                record.uniform_recovered, record.probe_rel_err = found.uniform_recovered, found.probe_rel_err
                record.retrieval_curve = found.curve
            if fidelity.wants_map(problem):
                record.attention_map = fidelity.encode(fidelity.effective_map(fn, q, k, v))
                record.softmax_map = fidelity.encode(fidelity.softmax_map(q, k, problem))
        except Exception as exc:
            record.check_note = _join(record.check_note, f"fidelity not measured: {_short(exc)}")


def _short(exc: BaseException) -> str:
    return f"failed: {classify(exc)[1][:300]}"


def _join(*notes: str | None) -> str:
    return "; ".join(n for n in notes if n)


def run_case(
    registry: Registry,
    job: dict[str, Any],
    set_memory_cap: Callable[[int | None], None],
    report: Report | None = None,
) -> dict[str, Any]:
    """Run one job; returns ``{"record": {...}, "healthy": bool}`` (unhealthy: replace the worker)."""
    run = CaseRun(registry, job, set_memory_cap, report or (lambda message: None))
    healthy = run.run()
    return {"record": run.record.as_dict(), "healthy": healthy}
