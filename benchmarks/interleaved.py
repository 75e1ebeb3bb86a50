"""What the benchmark scripts share: a call of an implementation prepared outside the timing, and
interleaved rounds (each group of calls once per round, the median kept), so that the machine's
drift over the run falls on every group alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence

from attnbench import Problem
from attnbench.case.modes import DECODE
from attnbench.plugins.registry import load_registry

Call = Callable[[], object]


def prepared(name: str, problem: Problem) -> Call:
    """A no-argument call of ``name`` on ``problem``'s inputs (a decode step on its cache in decode
    mode), prepared outside the timing; exits naming the reason where ``name`` cannot run it."""
    impl = load_registry().get(name)
    why = impl.supports(problem)
    if why:
        raise SystemExit(f"{name}: {why}")
    if problem.kind.reads_cache:
        inputs = DECODE.make_inputs(problem)
        step = impl.prepare_decode(problem, inputs.cache)
        return lambda: step(inputs.q, inputs.k_new, inputs.v_new)
    fn = impl.prepare(problem)
    q, k, v = problem.make_inputs()
    return lambda: fn(q, k, v)


def medians_ms(groups: Mapping[str, Sequence[Call]], rounds: int) -> dict[str, float]:
    """Each group's median time in ms over ``rounds`` rounds, a round calling every group in turn
    (a group's time is the sum of its calls); every call runs once first, outside the rounds
    (compiling, first-touch allocation)."""
    for group in groups.values():
        for call in group:
            call()
    times: dict[str, list[float]] = {key: [] for key in groups}
    for _ in range(rounds):
        for key, group in groups.items():
            start = time.perf_counter()
            for call in group:
                call()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(ts) * 1e3 for key, ts in times.items()}
