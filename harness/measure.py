"""Measure one (case, implementation) inside a worker: set-up, accuracy, time, memory, work.

The steps, in order: prepare (set-up outside the timing, e.g. compilation, its duration
recorded); one checked call against the float64 reference (which also warms up); the timed
loop, interleaved with the baseline; a memory pass of its own; FLOPs and the fraction of the
measured peak. Exceptions become records (``error`` or ``oom``), never crashes of the sweep.
"""

from __future__ import annotations

import gc
import math
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
from attnbench.contract import AttentionFn, Implementation
from attnbench.flops import attention_flops, dense_flops
from attnbench.memory import MemoryUnavailable, peak_bytes
from attnbench.problem import Problem
from attnbench.records import CASE_KEYS, Record
from attnbench.registry import Registry
from attnbench.timing import measure
from attnbench.verify import check

Tensor = torch.Tensor
#: Gradients are checked against the full float64 reference only up to this many score entries.
GRAD_CHECK_LIMIT = 1 << 24
OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "std::bad_alloc")


def problem_of(case: dict[str, Any]) -> Problem:
    fields = {k: case[k] for k in CASE_KEYS if k != "threads"}
    return Problem(**fields)


def make_call(fn: AttentionFn, problem: Problem, inputs: tuple[Tensor, Tensor, Tensor]) -> Callable[[], object]:
    """The zero-argument call to time for the problem's mode."""
    q, k, v = inputs
    if problem.mode == "forward":

        def forward() -> object:
            with torch.no_grad():
                return fn(q, k, v)

        return forward
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]  # [B, H(kv), N, D] each
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(q.device, q.dtype)  # [B, H, Nq, D]
    if problem.mode == "backward":
        out = fn(*leaves)  # the forward graph, built once outside the timing

        def backward() -> object:
            for t in leaves:
                t.grad = None
            out.backward(dout, retain_graph=True)
            return leaves[0].grad

        return backward

    def forward_backward() -> object:
        for t in leaves:
            t.grad = None
        fn(*leaves).backward(dout)
        return leaves[0].grad

    return forward_backward


def classify(exc: BaseException) -> tuple[str, str]:
    """``(status, reason)`` for an exception raised by an implementation."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    lowered = text.lower()
    is_oom = isinstance(exc, MemoryError | torch.OutOfMemoryError) or any(m in lowered for m in OOM_MARKERS)
    return ("oom" if is_oom else "error"), text[:4000]


def _prepare(impl: Implementation, problem: Problem) -> tuple[AttentionFn, float]:
    start = time.perf_counter()
    fn = impl.prepare(problem)
    measured = time.perf_counter() - start
    return fn, float(getattr(fn, "setup_s", measured))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def run_case(registry: Registry, job: dict[str, Any], set_memory_cap: Callable[[int | None], None]) -> dict[str, Any]:
    """Run one job; returns ``{"record": {...}, "healthy": bool}`` (unhealthy: replace the worker)."""
    case = job["case"]
    problem = problem_of(case)
    budget = job["budget"]
    record = Record(impl=job["impl"], status="ok", **case)
    record.worker_pid = os.getpid()
    started = time.perf_counter()
    threads = int(case["threads"]) or (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    record.threads_used = torch.get_num_threads()
    if problem.device == "cpu":
        set_memory_cap(int(budget["memory_gib"] * 2**30))
    healthy = True
    try:
        _measure(registry, job, problem, record)
    except BaseException as exc:
        record.status, record.reason = classify(exc)  # type: ignore[assignment]
        healthy = False
    finally:
        set_memory_cap(None)
        gc.collect()
    record.elapsed_s = time.perf_counter() - started
    return {"record": record.__dict__, "healthy": healthy}


def _measure(registry: Registry, job: dict[str, Any], problem: Problem, record: Record) -> None:
    impl = registry.get(job["impl"])
    budget = job["budget"]
    record.exact = impl.exact
    fn, record.setup_s = _prepare(impl, problem)
    inputs = problem.make_inputs(job.get("seed", 0))  # [B, H, Nq, D], [B, Hkv, Nk, D] x2
    small = problem.batch * problem.heads * problem.seq_len * problem.kv_len <= GRAD_CHECK_LIMIT
    result = check(
        impl, problem, fn=fn, inputs=inputs, seed=job.get("seed", 0),
        max_rows=int(budget["accuracy_rows"]), grads=problem.needs_grad and small,
    )  # fmt: skip
    _sync(problem.device)
    out = result.output
    record.max_abs_err, record.rel_err, record.accuracy_bound = out.max_abs_err, out.rel_err, out.bound
    record.accuracy_rows = result.rows
    record.full_max_abs_err, record.full_rel_err = result.full_max_abs_err, result.full_rel_err
    if not result.ok:
        record.status, record.reason = "inaccurate", result.failures()
    call = make_call(fn, problem, inputs)
    base_call, note = _baseline_call(registry, job, problem, inputs)
    timing = measure(
        call, base_call, problem.device,
        min_time_s=budget["min_time_s"], max_time_s=budget["max_time_s"], min_repeats=int(budget["min_repeats"]),
    )  # fmt: skip
    q1, median, q3 = timing.impl.quartiles()
    record.time_ms, record.time_q1_ms, record.time_q3_ms = median, q1, q3
    record.time_min_ms = min(timing.impl.ms)
    record.samples_ms = timing.impl.ms
    record.unstable = timing.unstable
    if timing.baseline is not None:
        record.baseline = job["baseline"]
        record.baseline_samples_ms = timing.baseline.ms
        record.baseline_time_ms = timing.baseline.median
        if record.status == "ok":
            record.speedup = record.baseline_time_ms / median
    elif note and record.status == "ok":
        record.reason = note
    del base_call
    gc.collect()
    try:
        record.peak_mem_bytes = peak_bytes(call, problem.device)
    except MemoryUnavailable as exc:
        record.reason = "; ".join(filter(None, [record.reason, f"memory not measured: {exc}"]))
    record.flops = attention_flops(problem)
    record.dense_flops = dense_flops(problem)
    record.gflops = record.flops / (median / 1e3) / 1e9
    peak = job.get("peak_gflops")
    if peak and math.isfinite(peak):
        record.peak_gflops = peak
        record.peak_fraction = record.gflops / peak


def _baseline_call(
    registry: Registry, job: dict[str, Any], problem: Problem, inputs: tuple[Tensor, Tensor, Tensor]
) -> tuple[Callable[[], object] | None, str]:
    """The baseline's call for interleaving, or None with a note saying why there is none."""
    name = job.get("baseline") or ""
    if not name or name == job["impl"]:
        return None, ""
    try:
        base = registry.get(name)
        avail = base.available()
        if not avail.ok:
            return None, f"baseline {name} unavailable: {avail.reason}"
        reason = base.supports(problem)
        if reason:
            return None, f"baseline {name} does not support this case: {reason}"
        fn, _ = _prepare(base, problem)
        call = make_call(fn, problem, inputs)
        call()  # fails here, not inside the timing loop
        return call, ""
    except Exception as exc:
        return None, f"baseline {name} failed: {classify(exc)[1][:300]}"
