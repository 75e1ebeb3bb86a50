"""The contract an attention implementation meets, in its two forms.

The simplest plugin is a function ``fn(q, k, v, *, causal, scale, **options)`` registered with
``@register("name")``; it is wrapped in a :class:`FunctionImplementation`. An implementation
that needs more — an availability check, set-up kept out of the timing, a declaration of what
it supports — subclasses :class:`Implementation` and is registered with the same decorator.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from attnbench.problem import Problem

Tensor = torch.Tensor
AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]
Feature = Literal["causal", "window", "layout", "gqa", "cross", "backward"]
ALL_FEATURES: frozenset[str] = frozenset({"causal", "window", "layout", "gqa", "cross", "backward"})
Computes = Literal["full", "causal", "window", "block-sparse", "kernelized"]


@dataclass(frozen=True)
class Availability:
    """Whether an implementation can run on this machine, and why not."""

    ok: bool
    reason: str = ""

    @classmethod
    def yes(cls) -> Availability:
        return cls(True, "")

    @classmethod
    def no(cls, reason: str) -> Availability:
        return cls(False, reason)


@dataclass(frozen=True)
class Growth:
    """How time and extra memory grow with the sequence length N, as exponents of N: time
    ``N^2`` and memory ``N`` is ``Growth(2, 1)``. A later fit of measured slopes checks them."""

    time: float = 2.0
    memory: float = 2.0

    def describe(self) -> str:
        return f"time N^{self.time:g}, memory N^{self.memory:g}"


class Implementation:
    """Base class of an attention implementation.

    Subclasses set the class attributes that declare what they are, and override
    :meth:`attention` (or :meth:`prepare`, when set-up must stay out of the timing).
    """

    #: The registered name (set on the instance by the registry).
    name: str = ""
    description: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    #: What it computes, beyond the default full softmax attention.
    computes: ClassVar[tuple[Computes, ...]] = ("full", "causal")
    #: What an approximate implementation approximates (empty for exact ones).
    approximates: ClassVar[str] = ""
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    dtypes: ClassVar[tuple[str, ...]] = ("float32", "bfloat16", "float16")
    features: ClassVar[frozenset[str]] = frozenset({"causal", "gqa", "cross", "backward"})
    growth: ClassVar[Growth] = Growth(2.0, 2.0)
    #: Where it came from: "built-in", a plugin file, or an entry point.
    source: str = "built-in"

    def available(self) -> Availability:
        """Whether this implementation can run here at all (library present, device present)."""
        return Availability.yes()

    def supports(self, problem: Problem) -> str | None:
        """``None`` when ``problem`` can run, else the reason it cannot."""
        if problem.device.split(":")[0] not in self.devices:
            return f"runs on {', '.join(self.devices)}, not {problem.device}"
        if problem.dtype not in self.dtypes:
            return f"supports dtypes {', '.join(self.dtypes)}, not {problem.dtype}"
        needed = {
            "causal": problem.causal,
            "window": problem.window > 0,
            "layout": problem.pattern.layout is not None,
            "gqa": problem.gqa,
            "cross": problem.cross,
            "backward": problem.needs_grad,
        }
        missing = [name for name, used in needed.items() if used and name not in self.features]
        if missing:
            return f"does not support {', '.join(missing)}"
        return None

    def memory_estimate(self, problem: Problem) -> int | None:
        """Bytes one call is expected to need beyond its inputs, or None when unknown; the runner
        does not start a case whose estimate exceeds the memory budget. The default covers the
        implementations that claim quadratic memory: a float32 score matrix and its softmax,
        kept again for the backward pass."""
        if self.growth.memory < 2:
            return None
        scores = problem.batch * problem.heads * problem.seq_len * problem.kv_len * 4  # [B, H, Nq, Nk] float32
        return scores * (2 if problem.mode == "forward" else 4)

    def prepare(self, problem: Problem) -> AttentionFn:
        """Set-up outside the timing (compile, build masks); returns the call to time."""

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return self.attention(q, k, v, problem)

        return run

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        """Compute attention for ``problem``: ``q`` ``[B, H, Nq, D]``, ``k``/``v`` ``[B, Hkv, Nk, D]``."""
        raise NotImplementedError(f"{type(self).__name__} overrides neither attention() nor prepare()")

    def reference(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem, rows: Tensor | None = None) -> Tensor:
        """What this implementation should compute, in float64, for the query ``rows`` given
        (all rows when None). Exact implementations compute masked softmax attention; an
        approximation overrides this with its own definition."""
        from attnbench.reference import softmax_attention

        return softmax_attention(q, k, v, problem, rows=rows)

    def declaration(self) -> dict[str, Any]:
        """What this implementation declares, as JSON-ready values."""
        avail = self.available()
        return {
            "name": self.name,
            "description": self.description,
            "exact": self.exact,
            "computes": list(self.computes),
            "approximates": self.approximates,
            "devices": list(self.devices),
            "dtypes": list(self.dtypes),
            "features": sorted(self.features),
            "time_growth": self.growth.time,
            "memory_growth": self.growth.memory,
            "source": self.source,
            "available": avail.ok,
            "reason": avail.reason,
        }


class FunctionImplementation(Implementation):
    """A plain function registered as an implementation.

    The function receives ``q, k, v`` and the keywords ``causal`` and ``scale``; when it
    declares the ``window`` or ``layout`` feature it also receives ``window=`` (an int) and
    ``layout=`` (a :class:`~attnbench.patterns.BlockLayout` or None).
    """

    def __init__(
        self,
        name: str,
        fn: Callable[..., Tensor],
        *,
        description: str = "",
        exact: bool = True,
        features: Iterable[str] = ("causal", "gqa", "cross", "backward"),
        devices: Iterable[str] = ("cpu", "cuda"),
        dtypes: Iterable[str] = ("float32", "bfloat16", "float16"),
        growth: Growth | None = None,
        approximates: str = "",
    ) -> None:
        unknown = set(features) - ALL_FEATURES
        if unknown:
            raise ValueError(
                f"implementation {name!r}: unknown features {sorted(unknown)}; known: {sorted(ALL_FEATURES)}"
            )
        self.fn = fn
        self.name = name
        doc = inspect.getdoc(fn) or ""
        self.description = description or (doc.splitlines()[0] if doc else f"user function {fn.__qualname__}")  # type: ignore[misc]
        self.exact = exact  # type: ignore[misc]
        self.approximates = approximates  # type: ignore[misc]
        self.features = frozenset(features)  # type: ignore[misc]
        self.devices = tuple(devices)  # type: ignore[misc]
        self.dtypes = tuple(dtypes)  # type: ignore[misc]
        self.growth = growth or Growth(2.0, 2.0)  # type: ignore[misc]
        computes: list[Computes] = ["full"]
        computes += ["causal"] if "causal" in self.features else []
        computes += ["window"] if "window" in self.features else []
        computes += ["block-sparse"] if "layout" in self.features else []
        self.computes = tuple(computes)  # type: ignore[misc]

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        options: dict[str, Any] = {}
        if "window" in self.features:
            options["window"] = problem.window
        if "layout" in self.features:
            options["layout"] = problem.pattern.layout
        return self.fn(q, k, v, causal=problem.causal, scale=problem.scale, **options)
