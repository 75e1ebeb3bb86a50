"""The steps one (case, implementation) goes through in its worker, and whose budget each spends.

The worker announces each step to the runner as it enters it, and every record keeps the step it
ended in. A step is owned by the implementation, by the baseline, or by the harness's reference
check; each owner has a time budget of its own (``timeout_s``), so the baseline's or the
reference's cost is never charged to the implementation. Running out of time or crashing in a
step the implementation does not own never becomes the implementation's status: without the
baseline, the record simply has no speedup; without the reference, it says which checks ran.
"""

from __future__ import annotations

from typing import Literal

Owner = Literal["impl", "baseline", "timing", "reference"]

LOAD = "load"
AVAILABILITY = "availability"
SUPPORTS = "supports"
ESTIMATE = "memory estimate"
BASELINE = "baseline"
PREPARE = "prepare"
CHECK = "accuracy check"
TIMING = "timing"
MEMORY = "memory pass"
REFERENCE = "reference"
DONE = "done"

#: Every step in order, with its owner ("timing" interleaves the implementation, the baseline and
#: the machine probe, and may spend the implementation's and the baseline's remaining time).
STEPS: dict[str, Owner] = {
    LOAD: "impl",
    AVAILABILITY: "impl",
    SUPPORTS: "impl",
    ESTIMATE: "impl",
    BASELINE: "baseline",
    PREPARE: "impl",
    CHECK: "impl",
    TIMING: "timing",
    MEMORY: "impl",
    REFERENCE: "reference",
    DONE: "impl",
}


def owner(step: str) -> Owner:
    return STEPS.get(step, "impl")
