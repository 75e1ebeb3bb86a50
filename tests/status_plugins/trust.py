"""Implementations for the tests of what the harness must never blame on an implementation.

Loaded with ``--plugin`` by ``tests/test_trust.py``.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from attnbench import Growth, Implementation, Problem, register

Tensor = torch.Tensor


@register("fast_sdpa", description="SDPA: fast beside a slow baseline")
def fast_sdpa(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


@register("plain_sdpa")
def plain_sdpa(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
    """A plain function wrapping SDPA, with no memory declaration."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


@register("slow_baseline", description="correct, and sleeps 1.5 s per call")
def slow_baseline(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
    time.sleep(1.5)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


@register("hanging_baseline", description="correct, and sleeps 30 s per call")
def hanging_baseline(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
    time.sleep(30)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


class _Approximation(Implementation):
    exact = False
    approximates = "softmax attention"
    devices = ("cpu",)
    features = frozenset({"causal"})

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=problem.causal, scale=problem.scale)


@register("reference_ooms")
class ReferenceOOMs(_Approximation):
    """Its own reference() asks for far too much memory: the check fails, not the implementation."""

    def reference(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem, rows: Tensor | None = None) -> Tensor:
        raise MemoryError("reference_ooms's reference() wanted a 4 GiB buffer")


@register("reference_crashes")
class ReferenceCrashes(_Approximation):
    """Its own reference() kills the worker."""

    def reference(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem, rows: Tensor | None = None) -> Tensor:
        ctypes.string_at(0)  # SIGSEGV
        return q


@register("supports_segfaults")
class SupportsSegfaults(Implementation):
    """Its supports() kills the process that asks: that must be a worker, never the runner."""

    devices = ("cpu",)

    def supports(self, problem: Problem) -> str | None:
        ctypes.string_at(0)  # SIGSEGV
        return None

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return q


@register("slowable_sdpa", description="SDPA, made slower by ATTNBENCH_TEST_SLOWDOWN (a factor) for the compare tests")
def slowable_sdpa(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
    import os

    start = time.perf_counter()
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    factor = float(os.environ.get("ATTNBENCH_TEST_SLOWDOWN", "1"))
    if factor > 1:
        time.sleep((factor - 1) * (time.perf_counter() - start))
    return out


@register("temporaries", description="SDPA plus a 1 MiB temporary per call; counts each call's page faults")
def temporaries(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
    """Appends the minor page faults of each call to ``$ATTNBENCH_TEST_FAULTS``: a worker that
    mapped every freed block afresh would fault the temporary's 256 pages in on every call."""
    import os
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    scratch = torch.ones(1 << 18)  # 1 MiB, freed on return: a kernel's workspace
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale) * scratch[0]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    with open(os.environ["ATTNBENCH_TEST_FAULTS"], "a", encoding="utf-8") as log:
        log.write(f"{faults}\n")
    return out


def _sdpa_after(pause: Callable[[], float], problem: Problem) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """SDPA after sleeping ``pause()`` seconds: a call whose cost the test plants."""

    def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        time.sleep(pause())
        return F.scaled_dot_product_attention(q, k, v, is_causal=problem.causal, scale=problem.scale)

    return run


@register("drifting")
class Drifting(Implementation):
    """A machine whose speed drifts between records, planted: every ``prepare`` (one per record,
    one per side of a paired timing) adds one to the counter in ``$ATTNBENCH_TEST_DRIFT``, and a
    call sleeps 10 ms (causal) or 20 ms (full), three times longer while the counter is odd. Its
    full pass costs 2x its causal pass; records prepared one after the other see different speeds."""

    description = "SDPA plus a sleep: full twice causal, and 3x slower while its counter is odd"
    exact = True
    devices = ("cpu",)
    features = frozenset({"causal"})

    def prepare(self, problem: Problem) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        import os
        from pathlib import Path

        counter = Path(os.environ["ATTNBENCH_TEST_DRIFT"])
        counter.write_text(str(int(counter.read_text() or 0) + 1 if counter.exists() else 1))
        base = 0.010 if problem.causal else 0.020
        return _sdpa_after(lambda: base * (3 if int(counter.read_text()) % 2 else 1), problem)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return self.prepare(problem)(q, k, v)


@register("sleeps_linearly")
class SleepsLinearly(Implementation):
    """A call that sleeps 5 ms per 64 tokens (time linear in N) and declares N^0.5: a claim its
    records break for real, so the run times its lengths in pairs and the claim stays broken."""

    description = "SDPA plus a sleep linear in N, declaring N^0.5"
    exact = True
    devices = ("cpu",)
    features = frozenset({"causal"})
    growth = Growth(0.5, 1.0)

    def prepare(self, problem: Problem) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        pause = 0.005 * problem.seq_len / 64
        return _sdpa_after(lambda: pause, problem)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return self.prepare(problem)(q, k, v)


@register("zeros_reference_ooms")
class ZerosReferenceOOMs(Implementation):
    """Declared exact, returns zeros; its own reference() raises MemoryError. The verdict against
    the case's own reference is reached first: it is inaccurate, and the failing reference a note."""

    devices = ("cpu",)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return q * 0  # zeros, differentiable (so its gradients are judged too)

    def reference(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem, rows: Tensor | None = None) -> Tensor:
        raise MemoryError("zeros_reference_ooms's reference() wanted a 4 GiB buffer")


@register("zeros_reference_crashes")
class ZerosReferenceCrashes(ZerosReferenceOOMs):
    """Declared exact, returns zeros; its own reference() kills the worker."""

    def reference(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem, rows: Tensor | None = None) -> Tensor:
        ctypes.string_at(0)  # SIGSEGV
        return q


_STORED: dict[tuple[int, ...], Tensor] = {}


@register(
    "stores_outputs",
    description="SDPA computed once per set of input tensors, then returned from a store",
    features=("causal",),
)
def stores_outputs(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
    """Keys its store on the tensors' data pointers: every timed repetition hands it the same
    tensors, so only the first call computes anything."""
    key = (q.data_ptr(), k.data_ptr(), v.data_ptr(), *q.shape)
    if key not in _STORED:
        _STORED[key] = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return _STORED[key]


_CALLS = {"n": 0}


def _misbehaves_after_two_calls(how: str) -> None:
    """Fine for the baseline step's two calls (its warm-up and its first timed call), then ``how``."""
    _CALLS["n"] += 1
    if _CALLS["n"] <= 2:
        return
    if how == "raises":
        raise RuntimeError("the baseline broke during the interleaved timing")
    if how == "crashes":
        ctypes.string_at(0)  # SIGSEGV
    if how == "hangs":
        time.sleep(600)


@register("baseline_raises_when_timed", description="SDPA that raises from its third call in a worker")
def baseline_raises_when_timed(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
    _misbehaves_after_two_calls("raises")
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


@register("baseline_crashes_when_timed", description="SDPA that kills its worker from its third call")
def baseline_crashes_when_timed(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
    _misbehaves_after_two_calls("crashes")
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


@register("baseline_hangs_when_timed", description="SDPA that hangs from its third call in a worker")
def baseline_hangs_when_timed(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
    _misbehaves_after_two_calls("hangs")
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
