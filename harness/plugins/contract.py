"""The contract an attention implementation meets, in its two forms.

The simplest plugin is a function ``fn(q, k, v, *, causal, scale, **options)`` registered with
``@register("name")``; it is wrapped in a :class:`FunctionImplementation`, whose keywords
declare the rest (its own reference, required features, set-up, tolerance, work). An
implementation that needs more — an availability check, its own ``supports()`` logic — subclasses
:class:`Implementation` and is registered with the same decorator.

What an implementation declares and what the harness does with it:

* ``exact = True``: it computes the case's function (softmax attention with the case's mask,
  window and layout) and is judged against the harness's own float64 reference of the case,
  whatever ``reference()`` it defines; a ``reference()`` of its own that differs from the case's
  function is reported as such.
* ``exact = False``: an approximation, held to its own ``reference()`` (its own definition), its
  distance from softmax attention and from uniform attention reported beside.
* ``work()``: the FLOPs and bytes of one call. Exact implementations count softmax attention's
  pairs; an approximation counts nothing unless it declares its own.
* ``growth.memory``: a declared memory growth lets the runner skip a case whose predicted
  footprint exceeds the budget; without a declaration the case simply runs under the memory cap.

Layer ``plugins``: imports ``attnbench.case`` and ``attnbench.plugins`` only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from attnbench.case.devices import device_kind
from attnbench.case.kvcache import KVCache
from attnbench.case.modes import sequence_problem
from attnbench.case.problem import FEATURES, OPTIONAL_FEATURES, Problem
from attnbench.case.variants import alibi_slopes, case_sinks
from attnbench.case.work import Work, io_bytes, softmax_work

Tensor = torch.Tensor
AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]
#: Every feature an implementation may declare (:data:`attnbench.case.problem.FEATURES`).
ALL_FEATURES: frozenset[str] = frozenset(FEATURES)
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


def unmet(
    problem: Problem, *, devices: Iterable[str], dtypes: Iterable[str], features: Iterable[str], requires: Iterable[str]
) -> str | None:
    """Why a declaration (devices, dtypes, features, required features) does not admit a case, or
    None when it does: the one place an implementation's declaration is held against a case, for
    an implementation's ``supports()`` and for the runner's choice of a plugin's pairs."""
    devices, dtypes, features = list(devices), list(dtypes), set(features)
    if device_kind(problem.device) not in devices:
        return f"runs on {', '.join(devices)}, not {problem.device}"
    if problem.dtype not in dtypes:
        return f"supports dtypes {', '.join(dtypes)}, not {problem.dtype}"
    needed = problem.uses()
    missing = [name for name, used in needed.items() if used and name not in features | OPTIONAL_FEATURES]
    if missing:
        return f"does not support {', '.join(missing)}"
    lacking = [name for name in sorted(requires) if not needed.get(name)]
    if lacking:
        return f"runs only with {', '.join(lacking)}; this case has none"
    return None


def check_features(names: Iterable[str], owner: str, what: str) -> frozenset[str]:
    chosen = frozenset(names)
    unknown = chosen - ALL_FEATURES
    if unknown:
        raise ValueError(f"implementation {owner!r}: unknown {what} {sorted(unknown)}; known: {sorted(ALL_FEATURES)}")
    return chosen


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
    #: Features it cannot run without (e.g. ``{"window"}``: windowed cases only).
    requires: ClassVar[frozenset[str]] = frozenset()
    #: Declared growth of time and memory with N; None: not declared (nothing is predicted).
    growth: ClassVar[Growth | None] = None
    #: Relative tolerance against its own definition (approximations); None: the dtype's default.
    tolerance: ClassVar[float | None] = None
    #: Where it came from: "built-in", a plugin file, or the module that registered it.
    source: str = "built-in"
    #: Whose kernel it calls, when it is a library's ("PyTorch", "xformers"): a verdict against it
    #: is a finding about that library's kernel, and the report states it apart from the rest.
    library: ClassVar[str] = ""

    def available(self) -> Availability:
        """Whether this implementation can run here at all (library present, device present)."""
        return Availability.yes()

    def supports(self, problem: Problem) -> str | None:
        """``None`` when ``problem`` can run, else the reason it cannot."""
        return unmet(problem, devices=self.devices, dtypes=self.dtypes, features=self.features, requires=self.requires)

    def memory_estimate(self, problem: Problem) -> int | None:
        """Bytes one call is expected to need beyond its inputs, or None when not declared; the
        runner does not start a case whose estimate exceeds the memory budget. An implementation
        that declares quadratic memory (``growth.memory >= 2``) is expected to hold a float32
        score matrix and its softmax, kept again for a backward pass."""
        if self.growth is None or self.growth.memory < 2:
            return None
        scores = problem.batch * problem.heads * problem.seq_len * problem.kv_len * 4  # [B, H, Nq, Nk] float32
        return int(scores * 2 * problem.kind.memory_factor)

    def work(self, problem: Problem) -> Work:
        """FLOPs and bytes of one call. An exact implementation computes softmax attention and, unless
        it declares its own work (by overriding this), is counted as it: the pairs its case
        computes; an approximation declares its own FLOPs or gets none (:mod:`attnbench.case.work`)."""
        if self.exact:
            return softmax_work(problem)
        return Work(None, io_bytes(problem), "none")

    @property
    def work_counted(self) -> str:
        """How its FLOPs are counted: "declared", "softmax" or "none" (:data:`attnbench.case.work.COUNTED`)."""
        if type(self).work is not Implementation.work:
            return "declared"
        return "softmax" if self.exact else "none"

    def prepare(self, problem: Problem) -> AttentionFn:
        """Set-up outside the timing (compile, build masks); returns the call to time."""

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return self.attention(q, k, v, problem)

        return run

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        """Compute attention for ``problem``: ``q`` ``[B, H, Nq, D]``, ``k``/``v`` ``[B, Hkv, Nk, D]``."""
        raise NotImplementedError(f"{type(self).__name__} overrides neither attention() nor prepare()")

    def prepare_decode(self, problem: Problem, cache: KVCache) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """One decode step against ``cache`` (:mod:`attnbench.case.kvcache`), set up outside the timing:
        the returned ``step(q, k_new, v_new)`` appends the new tokens' keys and values
        (``cache.append``) and returns ``[B, H, S, D]``. An implementation that reads the cache
        itself declares the ``decode`` feature and overrides this; the default is the dense-cache
        adapter, which gathers each sequence's tokens and calls :meth:`prepare`'s function."""
        return dense_cache_adapter(self, problem, cache)

    def reference(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem, rows: Tensor | None = None) -> Tensor:
        """What this implementation should compute, in float64, for the query ``rows`` given
        (all rows when None): ``[B, H, R, D]``. The default is the case's softmax attention; an
        approximation overrides this with its own definition (differentiable, for gradients)."""
        from attnbench.case.reference import softmax_attention

        return softmax_attention(q, k, v, problem, rows=rows)

    @property
    def own_reference(self) -> bool:
        """Whether it defines a reference of its own (rather than the case's softmax attention)."""
        return type(self).reference is not Implementation.reference

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
            "requires": sorted(self.requires),
            "time_growth": None if self.growth is None else self.growth.time,
            "memory_growth": None if self.growth is None else self.growth.memory,
            "own_reference": self.own_reference,
            "work": self.work_counted,
            "library": self.library,
            "tolerance": self.tolerance,
            "source": self.source,
            "available": avail.ok,
            "reason": avail.reason,
        }


def _takes_problem(fn: Callable[..., Any]) -> bool:
    try:
        return "problem" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class FunctionImplementation(Implementation):
    """A plain function registered as an implementation.

    The function receives ``q, k, v`` and the keywords ``causal`` and ``scale``; when it
    declares the ``window`` or ``layout`` feature it also receives ``window=`` (an int) and
    ``layout=`` (a :class:`~attnbench.case.patterns.BlockLayout` or None); likewise
    ``softcap=`` (a float, 0: none) with the ``softcap`` feature, ``alibi_slopes=`` (``[H]``
    float32, or None when the case has no bias) with ``alibi``, and ``sinks=`` (``[H]`` float32
    logits, or None) with ``sinks`` (:mod:`attnbench.case.variants`). The keywords of
    ``@register`` declare the rest:

    * ``description``, ``exact``, ``approximates``, ``devices``, ``dtypes``, ``growth``;
    * ``features``: what it can compute (default causal, gqa, cross, backward);
    * ``requires``: features it cannot run without, e.g. ``("window",)``;
    * ``reference``: a function of the same arguments giving the approximation's own definition
      (called in float64 on the CPU, and differentiated for gradient checks);
    * ``setup``: a factory ``setup(problem)`` called once per case outside the timing, returning
      the function to time (same arguments as the decorated function) — for random features, a
      compiled kernel, a mask built once;
    * ``tolerance``: relative tolerance against its own reference (approximations);
    * ``flops``: a function ``flops(problem) -> float`` giving the FLOPs of one forward call
      (scaled by the mode like softmax attention's); ``bytes_moved`` likewise for bytes.

    The decorated function, the reference and the function ``setup`` returns also receive
    ``problem=`` (the :class:`~attnbench.case.problem.Problem`, with its seed and ``generator()``) when
    they name a ``problem`` parameter.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[..., Tensor],
        *,
        description: str = "",
        exact: bool = True,
        features: Iterable[str] = ("causal", "gqa", "cross", "backward"),
        requires: Iterable[str] = (),
        devices: Iterable[str] = ("cpu", "cuda"),
        dtypes: Iterable[str] = ("float32", "bfloat16", "float16"),
        growth: Growth | None = None,
        approximates: str = "",
        reference: Callable[..., Tensor] | None = None,
        setup: Callable[[Problem], Callable[..., Tensor]] | None = None,
        tolerance: float | None = None,
        flops: Callable[[Problem], float] | None = None,
        bytes_moved: Callable[[Problem], float] | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        doc = inspect.getdoc(fn) or ""
        self.description = description or (doc.splitlines()[0] if doc else f"user function {fn.__qualname__}")  # type: ignore[misc]
        self.exact = exact  # type: ignore[misc]
        self.approximates = approximates or ("" if exact else "softmax attention")  # type: ignore[misc]
        self.requires = check_features(requires, name, "required features")  # type: ignore[misc]
        self.features = check_features(features, name, "features") | self.requires  # type: ignore[misc]
        self.devices = tuple(devices)  # type: ignore[misc]
        self.dtypes = tuple(dtypes)  # type: ignore[misc]
        self.growth = growth  # type: ignore[misc]
        self.tolerance = tolerance  # type: ignore[misc]
        self.reference_fn = reference
        self.setup = setup
        self.flops_fn = flops
        self.bytes_fn = bytes_moved
        computes: list[Computes] = ["full"] if not self.requires else []
        computes += ["causal"] if "causal" in self.features else []
        computes += ["window"] if "window" in self.features else []
        computes += ["block-sparse"] if "layout" in self.features else []
        computes += [] if exact else ["kernelized"]
        self.computes = tuple(computes)  # type: ignore[misc]

    def _options(self, problem: Problem, fn: Callable[..., Tensor]) -> dict[str, Any]:
        options: dict[str, Any] = {"causal": problem.causal, "scale": problem.scale}
        if "window" in self.features:
            options["window"] = problem.window
        if "layout" in self.features:
            options["layout"] = problem.pattern.layout
        if "softcap" in self.features:
            options["softcap"] = problem.softcap
        if "alibi" in self.features:
            slopes = alibi_slopes(problem.heads) if problem.bias == "alibi" else None
            options["alibi_slopes"] = None if slopes is None else slopes.to(problem.device, torch.float32)
        if "sinks" in self.features:
            options["sinks"] = case_sinks(problem)
        if _takes_problem(fn):
            options["problem"] = problem
        return options

    def prepare(self, problem: Problem) -> AttentionFn:
        timed = self.setup(problem) if self.setup is not None else self.fn
        options = self._options(problem, timed)

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return timed(q, k, v, **options)

        return run

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return self.prepare(problem)(q, k, v)

    @property
    def own_reference(self) -> bool:
        return self.reference_fn is not None

    def reference(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem, rows: Tensor | None = None) -> Tensor:
        if self.reference_fn is None:
            return super().reference(q, k, v, problem, rows)
        q64, k64, v64 = (t.to("cpu", torch.float64) for t in (q, k, v))  # differentiable
        out = self.reference_fn(q64, k64, v64, **self._options(problem, self.reference_fn))  # [B, H, Nq, D]
        return out if rows is None else out[:, :, rows]

    def work(self, problem: Problem) -> Work:
        base = super().work(problem)
        if self.flops_fn is None and self.bytes_fn is None:
            return base
        factor = problem.kind.flops_factor
        flops = base.flops if self.flops_fn is None else float(self.flops_fn(problem)) * factor
        moved = base.bytes if self.bytes_fn is None else float(self.bytes_fn(problem))
        return Work(flops, moved, base.counted if self.flops_fn is None else "declared")

    @property
    def work_counted(self) -> str:
        if self.flops_fn is not None:
            return "declared"
        return "softmax" if self.exact else "none"


#: What a decode record's ``adapter`` says when the implementation was called through the adapter.
ADAPTER = "dense-cache adapter: appended, gathered per sequence, then called"
DecodeFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def dense_cache_adapter(impl: Implementation, problem: Problem, cache: KVCache) -> DecodeFn:
    """A decode step for an implementation that knows nothing of caches: append the new tokens,
    then call the implementation on each sequence's attended keys and values (views of a
    contiguous cache with uniform lengths, in one call; gathered copies otherwise, one call per
    sequence). Set-up (``prepare``) happens here, outside the timing, once per distinct length."""
    lengths = [int(n) for n in cache.attended]
    if not cache.paged and len(set(lengths)) == 1:
        n = lengths[0]
        whole = impl.prepare(sequence_problem(problem, n).with_(batch=problem.batch))

        def step_views(q: Tensor, k_new: Tensor, v_new: Tensor) -> Tensor:
            cache.append(k_new, v_new)
            return whole(q, cache.k[:, :, :n], cache.v[:, :, :n])  # [B, H, S, D]

        return step_views
    prepared = {n: impl.prepare(sequence_problem(problem, n)) for n in set(lengths)}

    def step(q: Tensor, k_new: Tensor, v_new: Tensor) -> Tensor:
        cache.append(k_new, v_new)
        outs = []
        for b, n in enumerate(lengths):
            k_b, v_b = cache.gather(b)  # [1, Hkv, L_b, D]
            outs.append(prepared[n](q[b : b + 1], k_b, v_b))
        return torch.cat(outs, dim=0)  # [B, H, S, D]

    return step
