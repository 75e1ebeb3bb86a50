"""``decode``: one step of generation against a KV cache.

Each timed call is one decode step: ``seq_len`` new query tokens (1, or a few for speculative
decoding) append their keys and values to a preallocated cache of capacity ``kv_len`` and
attend to every valid token of their sequence (:mod:`attnbench.case.kvcache`: uniform or ragged
lengths, contiguous or paged layout). The new tokens are causal among themselves (bottom-right:
the last one sees everything); a window, if any, counts back from each token's position. The
same slots are written on every call, so the cache does not grow while it is timed.

Its cost is reading the cache, so it is judged in bytes per second against the memory
bandwidth; the FLOPs are counted too (the pairs of every sequence's own length). Implementations
that declare the ``decode`` feature get the cache itself (``prepare_decode``); any other runs
through the dense-cache adapter, which appends, gathers each sequence's keys and values and
calls the implementation on them (the record says so). The accuracy check judges each sequence
against the float64 reference of its own valid tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from attnbench.case.kvcache import KVCache, make_cache, parse_cache, valid_lengths
from attnbench.case.modes.base import Bench, Mode, same_shape

if TYPE_CHECKING:
    from attnbench.case.problem import Problem
    from attnbench.measure.verify import CheckResult, Outputs
    from attnbench.plugins.contract import Implementation

Tensor = torch.Tensor


@dataclass
class DecodeInputs:
    """One decode step's inputs: the new tokens' queries, keys and values, and the cache."""

    q: Tensor  # [B, H, S, D]
    k_new: Tensor  # [B, Hkv, S, D]
    v_new: Tensor  # [B, Hkv, S, D]
    cache: KVCache


DecodeFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def attended(problem: Problem) -> Tensor:
    """``[B]``: the tokens each sequence attends to after the step (seeded, as the cache has them)."""
    return valid_lengths(problem.batch, problem.seq_len, problem.kv_len, problem.kv_lengths, problem.seed)


def sequence_problem(problem: Problem, length: int) -> Problem:
    """Sequence ``b`` of a decode step as an ordinary (cross-attention) problem against its own
    ``length`` attended tokens."""
    return problem.with_(batch=1, kv_len=length, mode="forward", cache="contiguous", kv_lengths="uniform")


ADAPTER = "dense-cache adapter: appended, gathered per sequence, then called"


def dense_cache_adapter(impl: Implementation, problem: Problem, cache: KVCache) -> DecodeFn:
    """A decode step for an implementation that knows nothing of caches: append the new tokens,
    then call the implementation on each sequence's attended keys and values (views of a
    contiguous cache with uniform lengths, in one call; gathered copies otherwise, one call per
    sequence). Set-up (``prepare``) happens here, outside the timing, once per distinct length."""
    lengths = [int(n) for n in cache.attended]
    if not cache.paged and len(set(lengths)) == 1:
        n = lengths[0]
        whole = impl.prepare(problem.with_(kv_len=n, mode="forward", cache="contiguous", kv_lengths="uniform"))

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


class DecodeBench(Bench):
    """One decode step: the new tokens' queries, keys and values and the whole cache are the
    scrambled inputs (the step rewrites the same slots on every call, so restoring the cache
    restores the step's inputs exactly)."""

    def __init__(self, fn: DecodeFn, inputs: DecodeInputs) -> None:
        q, k_new, v_new = inputs.q, inputs.k_new, inputs.v_new

        def step() -> object:
            with torch.no_grad():
                return fn(q, k_new, v_new)  # [B, H, S, D]; the cache now holds the new tokens

        super().__init__(step, (q, k_new, v_new, inputs.cache.k, inputs.cache.v))
        self.q = q

    def first(self) -> None:
        out = self.call()
        same_shape(out, self.q)  # type: ignore[arg-type]

    def check(self, rows: Tensor) -> Outputs:
        from attnbench.measure.verify import Outputs

        out = self.call()
        assert isinstance(out, torch.Tensor)
        same_shape(out, self.q)
        return Outputs(out.detach().cpu())


class Decode(Mode):
    name = "decode"
    memory_bound = True

    def make_inputs(self, problem: Problem) -> DecodeInputs:
        gen = torch.Generator().manual_seed(problem.seed)
        b, s, d = problem.batch, problem.seq_len, problem.head_dim
        q, k_new, v_new = (
            torch.randn(b, h, s, d, generator=gen).to(problem.device, problem.torch_dtype)
            for h in (problem.heads, problem.kv_heads, problem.kv_heads)
        )  # [B, H, S, D], [B, Hkv, S, D] x2: the new tokens
        cache = make_cache(
            problem.batch, problem.kv_heads, problem.head_dim, problem.kv_len, problem.seq_len,
            page=parse_cache(problem.cache), lengths=problem.kv_lengths, seed=problem.seed,
            dtype=problem.torch_dtype, device=problem.device,
        )  # fmt: skip
        return DecodeInputs(q, k_new, v_new, cache)

    def prepare(self, impl: Implementation, problem: Problem, inputs: DecodeInputs) -> DecodeFn:
        return impl.prepare_decode(problem, inputs.cache)

    def bench(self, fn: Callable[..., Tensor], problem: Problem, inputs: DecodeInputs) -> Bench:
        return DecodeBench(fn, inputs)

    def pairs(self, problem: Problem) -> int:
        return sum(problem.pattern.pairs(problem.seq_len, int(n)) for n in attended(problem))

    def io_bytes(self, problem: Problem) -> float:
        elem = torch.empty((), dtype=problem.torch_dtype).element_size()
        kv_read = 2 * problem.kv_heads * problem.head_dim * int(attended(problem).sum())
        new = 2 * problem.batch * problem.kv_heads * problem.seq_len * problem.head_dim  # written
        q = problem.batch * problem.heads * problem.seq_len * problem.head_dim  # read, and the output written
        return float((kv_read + new + 2 * q) * elem)

    def judge(
        self, impl: Implementation, problem: Problem, inputs: DecodeInputs, got: Outputs, rows: Tensor
    ) -> CheckResult:
        """Each sequence against the float64 reference of its own valid tokens; the verdicts of
        the worst sequence are kept."""
        from attnbench.measure.verify import Outputs, judge

        worst: CheckResult | None = None
        compared = []
        every = torch.arange(problem.seq_len)
        for b in range(problem.batch):
            k_b, v_b = inputs.cache.gather(b)  # [1, Hkv, L_b, D]
            sub = sequence_problem(problem, int(inputs.cache.attended[b]))
            result = judge(impl, sub, (inputs.q[b : b + 1], k_b, v_b), Outputs(got.out[b : b + 1]), every)
            compared += result.compared
            if worst is None or _badness(result.output) > _badness(worst.output):
                worst = result
        assert worst is not None
        worst.rows = problem.seq_len * problem.batch
        worst.compared = compared  # every sequence, for the comparison with an own reference()
        return worst


def _badness(verdict: Any) -> float:
    """How far past (or how close to) its bound a verdict is; NaN counts as worst."""
    err, bound = verdict.max_abs_err, verdict.bound
    if err != err:  # NaN
        return float("inf")
    return err / bound if bound > 0 else (0.0 if err == 0 else float("inf"))
