"""Every (case, implementation) of a suite as one pytest-benchmark test.

Built from the same registry, suites and seeded inputs as ``attnbench run``, so that
``pytest benchmarks/ --benchmark-json=out.json`` and pytest-benchmark's own
``--benchmark-compare`` work, and ``attnbench report out.json`` reads the result. Unlike
``attnbench run`` these tests run in the pytest process itself: no isolation from a crash, no
memory pass. Each test judges the call it timed (on the inputs scrambled for the timing, then
restored) against the float64 reference, records the verdict, and fails when the implementation is
inaccurate.
"""

from __future__ import annotations

from typing import Any

import pytest

from attnbench.measure.bench import bench, prepare
from attnbench.measure.devices import device
from attnbench.measure.verify import check_rows, judge
from attnbench.plugins.registry import load_registry
from attnbench.sweep.suite import Case, Suite


def test_attention(benchmark: Any, pair: tuple[Case, str], suite: Suite) -> None:
    case, name = pair
    problem = case
    impl = load_registry().get(name)
    if not impl.available().ok:
        pytest.skip(f"unavailable: {impl.available().reason}")
    where = device(problem.device)
    if not where.present():
        pytest.skip(f"no {problem.device} device")
    if reason := impl.supports(problem):
        pytest.skip(f"unsupported: {reason}")
    where.set_threads(case.threads)
    inputs = problem.kind.make_inputs(problem)
    fn = prepare(impl, problem, inputs)
    timed = bench(fn, problem, inputs)
    timed.scramble()  # timed on other values of the same distribution, judged on the seeded ones
    benchmark.pedantic(timed.call, rounds=5, iterations=1, warmup_rounds=1)
    timed.restore()
    rows = check_rows(problem, int(suite.budget["accuracy_rows"]))
    verdict = judge(impl, problem, inputs, timed.check(rows), rows)
    work = impl.work(problem)
    benchmark.extra_info.update({"impl": name, **case.fields(), "flops": work.flops, "flops_counted": work.counted})
    benchmark.extra_info.update(
        status="ok" if verdict.ok else "inaccurate", checks=verdict.checks, max_abs_err=verdict.output.max_abs_err
    )
    assert verdict.ok, verdict.failures()
