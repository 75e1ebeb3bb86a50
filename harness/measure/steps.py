"""The steps one (case, implementation) goes through in its worker, and whose budget each spends.

The worker announces each step to the runner as it enters it, and every record keeps the step it
ended in. A step is owned by the implementation, by the baseline, or by the harness's reference
check; each owner has a time budget of its own (``timeout_s``), so the baseline's or the
reference's cost is never charged to the implementation. Running out of time or crashing in a
step the implementation does not own never becomes the implementation's status: without the
baseline, the record simply has no speedup (or the implementation is timed again alone); without
the reference, it is ``unchecked`` and says why.

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""

from __future__ import annotations

from typing import Literal

Owner = Literal["impl", "baseline", "timing", "reference"]
Callee = Literal["impl", "baseline"]

LOAD = "load"
AVAILABILITY = "availability"
SUPPORTS = "supports"
ESTIMATE = "memory estimate"
BASELINE = "baseline"
PREPARE = "prepare"
FIRST_CALL = "first call"
TIMING = "timing"
CHECK = "accuracy check"
REFERENCE = "reference"
OWN_REFERENCE = "own reference"
DONE = "done"

#: Every step in order, with its owner ("timing" interleaves the implementation, the baseline and
#: the machine probe, and may spend the implementation's and the baseline's remaining time; while
#: a baseline call runs in it, that call is the baseline's, on the baseline's budget). The judged
#: call (*accuracy check*) comes after the timing, on the same tensors, and is also the memory
#: pass; *own reference* compares an exact implementation's own ``reference()`` once the
#: verdicts exist, so it can only add a note.
STEPS: dict[str, Owner] = {
    LOAD: "impl",
    AVAILABILITY: "impl",
    SUPPORTS: "impl",
    ESTIMATE: "impl",
    BASELINE: "baseline",
    PREPARE: "impl",
    FIRST_CALL: "impl",
    TIMING: "timing",
    CHECK: "impl",
    REFERENCE: "reference",
    OWN_REFERENCE: "reference",
    DONE: "impl",
}


def owner(step: str) -> Owner:
    return STEPS.get(step, "impl")
