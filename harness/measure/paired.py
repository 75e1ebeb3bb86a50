"""Two calls timed alternately in one worker: the paired timings of :mod:`attnbench.sweep.pairs`.

The implementation on its case and a peer on the peer's case, each set up and called once first,
then timed alternately (:func:`attnbench.measure.timing.measure`); the accuracy of both was
checked in their records.

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""

from __future__ import annotations

import socket
from typing import Any

from attnbench.case.keys import problem_of
from attnbench.measure.bench import bench, prepare_timed
from attnbench.measure.devices import device
from attnbench.measure.timing import measure
from attnbench.plugins.registry import Registry


def time_pair(registry: Registry, job: dict[str, Any]) -> dict[str, Any]:
    """Time ``job["impl"]`` on ``job["case"]`` and ``job["peer"]`` on ``job["peer_case"]``
    alternately (:mod:`attnbench.sweep.pairs`): ``{"impl_ms": [...], "peer_ms": [...], "inner": [a, b],
    "timed_on": host}``. Each side is set up and called once first; the accuracy of both was
    checked in their records."""
    budget = job["budget"]
    problems = [problem_of(job["case"]), problem_of(job["peer_case"])]
    where = device(problems[0].device)
    where.set_threads(int(job["case"]["threads"]))
    if where.present():
        where.activate()
    calls = []
    for name, problem in zip((job["impl"], job["peer"]), problems, strict=True):
        inputs = problem.kind.make_inputs(problem)
        fn, _ = prepare_timed(registry.get(name), problem, inputs)
        call = bench(fn, problem, inputs).call
        call()  # warm-up, and a failure here rather than in the loop
        calls.append(call)
    timing = measure(
        calls[0],
        calls[1],
        where.clock(),
        min_time_s=budget["min_time_s"],
        max_time_s=budget["max_time_s"],
        min_repeats=int(budget["min_repeats"]),
        baseline_budget_s=budget["timeout_s"],
    )
    peer = timing.baseline
    return {
        "impl_ms": timing.impl.ms,
        "peer_ms": peer.ms if peer is not None else [],
        "inner": [timing.impl.inner, peer.inner if peer is not None else 0],
        "timed_on": socket.gethostname(),
    }
