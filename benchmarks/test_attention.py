"""Every (case, implementation) of a suite as one pytest-benchmark test.

Built from the same registry, suites and seeded inputs as ``attnbench run``, so that
``pytest benchmarks/ --benchmark-json=out.json`` and pytest-benchmark's own
``--benchmark-compare`` work, and ``attnbench report out.json`` reads the result. Unlike
``attnbench run`` these tests run in the pytest process itself: no isolation from a crash, no
memory pass. Each test first checks the output against the float64 reference and fails when
the implementation is inaccurate.
"""

from __future__ import annotations

from typing import Any

import pytest

from attnbench.devices import device
from attnbench.registry import load_registry
from attnbench.suite import Case, Suite
from attnbench.verify import check


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
    fn = impl.prepare(problem)
    inputs = problem.make_inputs()
    verdict = check(impl, problem, fn=fn, inputs=inputs, max_rows=int(suite.budget["accuracy_rows"]))
    assert verdict.ok, verdict.failures()
    work = impl.work(problem)
    benchmark.extra_info.update({"impl": name, "status": "ok", **case.fields(), "flops": work.flops})
    benchmark.extra_info["max_abs_err"] = verdict.output.max_abs_err
    benchmark.pedantic(problem.kind.timed_call(fn, problem, inputs), rounds=5, iterations=1, warmup_rounds=1)
