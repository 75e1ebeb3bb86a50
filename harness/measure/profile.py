"""A profile of one pair: ``torch.profiler`` over a few calls made as a timed run makes them.

In the worker, the implementation is set up for the case (:func:`attnbench.measure.bench.prepare_timed`,
outside the profile), the call to time is built as the timing loop builds it
(:func:`attnbench.measure.bench.bench`: the mode's forward, backward or decode step on the
case's inputs) and called twice to warm up. A few calls are then timed without the profiler
(the call's own time) and a few more under it, each inside a ``record_function`` named
``attnbench call I`` so that the trace shows where each call begins and ends; on CUDA the
profiler records the device's kernels too, and each call is synchronized.

The trace is written as Chrome trace JSON (``trace.json``, which Perfetto and chrome://tracing
open). The summary ranks operators by self time (time in the operator itself, not in the
operators it calls) and gives each operator's share of the profiled calls' wall time, self and
inclusive: an operator whose inclusive share is near 1 is where the call spends its time.

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""

from __future__ import annotations

import statistics
import time
from functools import cache
from typing import Any

import torch

from attnbench.case.keys import as_text, problem_of
from attnbench.measure.bench import bench, prepare_timed
from attnbench.measure.devices import device
from attnbench.plugins.registry import Registry

#: The name of the span around each profiled call (``attnbench call 0``, …).
CALL_SPAN = "attnbench call"


def command_for(impl: str, case: dict[str, Any]) -> str:
    """The ``attnbench profile`` command of a record's pair: the case fields that differ from the
    command's defaults (:data:`attnbench.measure.check.BASE`; the seed is the profile's own)."""
    default = _defaults()
    implied = {"kv_heads": case.get("heads"), "kv_len": case.get("seq_len")}  # 0 means these
    case = {k: v for k, v in case.items() if k not in implied or as_text(v) != as_text(implied[k])}
    spec = ",".join(
        f"{k}={str(v).lower() if isinstance(v, bool) else as_text(v)}"
        for k, v in case.items()
        if k in default and k != "seed" and as_text(default[k]) != as_text(v)
    )
    quoted = f"'{spec}'" if any(c in spec for c in " |;&*?") else spec
    return f"attnbench profile {impl}" + (f" --case {quoted}" if spec else "")


@cache
def _defaults() -> dict[str, Any]:
    from attnbench.case.problem import Problem
    from attnbench.measure.check import BASE

    return Problem(**BASE).fields()


def profile_pair(registry: Registry, job: dict[str, Any]) -> dict[str, Any]:
    """Profile ``job["impl"]`` on ``job["case"]`` for ``job["calls"]`` calls; write the Chrome trace
    to ``job["trace"]``. Returns the summary (``top``: operators by self time), or ``failure``."""
    problem = problem_of(job["case"])
    impl = registry.get(job["impl"])
    available = impl.available()
    if not available.ok:
        return {"failure": f"{impl.name} is unavailable here: {available.reason}"}
    reason = impl.supports(problem)
    if reason is not None:
        return {"failure": f"{impl.name} does not run this case: {reason}"}
    where = device(problem.device)
    threads = where.set_threads(problem.threads)
    if where.present():
        where.activate()
    inputs = problem.kind.make_inputs(problem)
    fn, setup_s = prepare_timed(impl, problem, inputs)
    call = bench(fn, problem, inputs).call
    for _ in range(2):
        call()  # warm-up, as the timing loop's
    calls = max(1, int(job.get("calls", 5)))
    clock = where.clock()
    plain_ms = [clock.time(call) for _ in range(calls)]
    cuda = problem.device.startswith("cuda")
    activities = [torch.profiler.ProfilerActivity.CPU]
    activities += [torch.profiler.ProfilerActivity.CUDA] if cuda else []
    spans_ms = []
    with torch.profiler.profile(activities=activities) as prof:
        for i in range(calls):
            where.synchronize()
            start = time.perf_counter()
            with torch.profiler.record_function(f"{CALL_SPAN} {i}"):
                call()
                where.synchronize()
            spans_ms.append((time.perf_counter() - start) * 1e3)
    prof.export_chrome_trace(str(job["trace"]))
    wall_us = sum(spans_ms) * 1e3
    return {
        "impl": impl.name,
        "case": problem.fields(),
        "label": problem.label(),
        "threads_used": threads,
        "setup_s": setup_s,
        "calls": calls,
        "call_ms": statistics.median(plain_ms),
        "profiled_call_ms": statistics.median(spans_ms),
        "top": _operators(prof, wall_us, cuda, int(job.get("top", 15))),
        "trace": str(job["trace"]),
    }


def _operators(prof: Any, wall_us: float, cuda: bool, top: int) -> list[dict[str, Any]]:
    """The ``top`` operators by self time (device time on CUDA), each with its share of the
    profiled calls' wall time."""
    rows = []
    for event in prof.key_averages():
        if event.key.startswith(CALL_SPAN):
            continue
        self_us = float(event.self_cpu_time_total)
        total_us = float(event.cpu_time_total)
        row = {
            "name": event.key,
            "count": int(event.count),
            "self_ms": self_us / 1e3,
            "total_ms": total_us / 1e3,
            "self_share": self_us / wall_us if wall_us > 0 else 0.0,
            "total_share": total_us / wall_us if wall_us > 0 else 0.0,
        }
        if cuda:
            device_us = float(getattr(event, "self_device_time_total", 0.0) or 0.0)
            row["self_device_ms"] = device_us / 1e3
            row["device_share"] = device_us / wall_us if wall_us > 0 else 0.0
        rows.append(row)
    key = "self_device_ms" if cuda else "self_ms"
    rows.sort(key=lambda r: -float(r[key]))
    return rows[:top]
