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
from attnbench.flops import attention_flops
from attnbench.measure import make_call
from attnbench.registry import load_registry
from attnbench.suite import Case, Suite
from attnbench.verify import check


def test_attention(benchmark: Any, pair: tuple[Case, str], suite: Suite) -> None:
    import torch

    case, name = pair
    problem = case.problem
    impl = load_registry().get(name)
    if not impl.available().ok:
        pytest.skip(f"unavailable: {impl.available().reason}")
    if problem.device not in ("cpu",) and not torch.cuda.is_available():
        pytest.skip(f"no {problem.device} device")
    if reason := impl.supports(problem):
        pytest.skip(f"unsupported: {reason}")
    torch.set_num_threads(case.threads or torch.get_num_threads())
    fn = impl.prepare(problem)
    inputs = problem.make_inputs(suite.seed)
    verdict = check(impl, problem, fn=fn, inputs=inputs, grads=False, max_rows=int(suite.budget["accuracy_rows"]))
    assert verdict.ok, verdict.failures()
    benchmark.extra_info.update({"impl": name, "status": "ok", **case.fields(), "flops": attention_flops(problem)})
    benchmark.extra_info["max_abs_err"] = verdict.output.max_abs_err
    benchmark.pedantic(make_call(fn, problem, inputs), rounds=5, iterations=1, warmup_rounds=1)
