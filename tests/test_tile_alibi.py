"""ALiBi on the tiled kernels (``chunked``, ``sliding_window``): exact against the float64
reference in every layout the tiles meet, planted bugs in the tile masks caught, and the masks'
memory linear in the sequence length."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from attnbench import Problem
from attnbench.implementations import _pattern_plan, _plan, _tile_bias
from attnbench.implementations.chunked import Chunked
from attnbench.implementations.sliding_window import SlidingWindow, plan_window
from attnbench.measure.verify import check
from attnbench.plugins.registry import load_registry

CASES: list[tuple[str, dict[str, Any]]] = [
    ("chunked", dict(causal=True)),
    ("chunked", dict(causal=True, kv_heads=2, batch=2)),  # grouped heads: tiles as the kernel's batch
    ("chunked", dict(causal=True, kv_len=1500)),  # cross attention, queries aligned bottom-right
    ("chunked", dict(causal=True, window=100)),  # keys before, band edges with a keep mask
    ("chunked", dict(causal=False, window=100)),  # keys after the rows too
    ("chunked", dict(causal=False)),  # one full-width tile the diagonal crosses
    ("chunked", dict(causal=True, sinks="learned")),  # the sink joins the shifted log-sum-exp
    ("chunked", dict(causal=True, documents="longtail:4")),
    ("sliding_window", dict(causal=True, window=100)),
    ("sliding_window", dict(causal=False, window=50, kv_heads=2)),
    ("sliding_window", dict(causal=True, window=200, sinks="learned", batch=2)),
]


class _ChunkedMatmul(Chunked):
    backend = "matmul"


class _SlidingMatmul(SlidingWindow):
    backend = "matmul"


@pytest.mark.parametrize("name,fields", CASES, ids=lambda x: x if isinstance(x, str) else "-".join(map(str, x.items())))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tiles_compute_alibi_exactly(name: str, fields: dict[str, Any], dtype: str) -> None:
    impl = load_registry().get(name)
    for mode in ("forward", "forward_backward"):
        problem = Problem(heads=4, seq_len=1024, head_dim=32, dtype=dtype, mode=mode, bias="alibi", **fields)
        assert impl.supports(problem) is None, impl.supports(problem)
        result = check(impl, problem, max_rows=64)
        assert result.ok, (mode, result.figures())


@pytest.mark.parametrize("impl", [_ChunkedMatmul(), _SlidingMatmul()], ids=["chunked", "sliding_window"])
def test_the_matmul_back_end_takes_the_same_masks(impl: Chunked | SlidingWindow) -> None:
    for fields in (dict(causal=True, window=100, kv_heads=2, batch=2), dict(causal=False, window=50)):
        problem = Problem(heads=4, seq_len=1024, head_dim=32, mode="forward_backward", bias="alibi", **fields)
        result = check(impl, problem, max_rows=64)
        assert result.ok, (fields, result.figures())


@pytest.mark.slow
@pytest.mark.parametrize("name,window", [("chunked", 0), ("sliding_window", 4096)])
def test_tiles_compute_alibi_exactly_at_8k_in_bfloat16(name: str, window: int) -> None:
    problem = Problem(
        heads=8, seq_len=8192, head_dim=64, dtype="bfloat16", mode="forward_backward", causal=True, window=window,
        bias="alibi",
    )  # fmt: skip
    result = check(load_registry().get(name), problem, max_rows=64)
    assert result.ok, result.figures()


def _plant(monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    built = _tile_bias.for_case

    def planted(plan: _plan.Plan, problem: Problem) -> _tile_bias.TileBias | None:
        right = built(plan, problem)
        return None if right is None else _tile_bias.TileBias(tuple(change(p) for p in right.pieces))

    monkeypatch.setattr(_tile_bias, "for_case", planted)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_dropped_row_shift_is_caught(monkeypatch: pytest.MonkeyPatch, dtype: str) -> None:
    """Each run of keys before a block's diagonal has its rows' ALiBi constant taken out of the
    kernel's log-sum-exp; forgetting to put it back weighs far keys as if they were near."""
    problem = Problem(heads=8, seq_len=2048, head_dim=64, dtype=dtype, causal=True, bias="alibi")
    assert check(load_registry().get("chunked"), problem, max_rows=64).ok
    _plant(monkeypatch, lambda p: replace(p, shift=None))
    caught = check(load_registry().get("chunked"), problem, max_rows=64)
    assert not caught.ok, caught.figures()


@pytest.mark.parametrize("name,window", [("chunked", 0), ("sliding_window", 256)])
def test_slopes_in_reversed_head_order_are_caught(monkeypatch: pytest.MonkeyPatch, name: str, window: int) -> None:
    problem = Problem(heads=8, seq_len=2048, head_dim=64, dtype="bfloat16", causal=True, window=window, bias="alibi")
    assert check(load_registry().get(name), problem, max_rows=64).ok
    # heads are dim 0 of every mask and shift in the by-head layout (queries and keys share heads)
    _plant(monkeypatch, lambda p: replace(p, mask=p.mask.flip(0), shift=None if p.shift is None else p.shift.flip(0)))
    caught = check(load_registry().get(name), problem, max_rows=64)
    assert not caught.ok, caught.figures()


def test_the_masks_memory_is_linear_in_the_length() -> None:
    """Causal chunked at 16K and 64K tokens with 32 heads: the shared key ramps (``2·H·Nk``
    floats) and one ``256 × 256`` diagonal mask, not the ``H·Nk²`` a whole mask would hold."""
    heads = 32
    for n in (16384, 65536):
        problem = Problem(heads=heads, seq_len=n, head_dim=128, causal=True, bias="alibi")
        rows = _plan.rows_per_call(1, heads, 128)
        plan = _pattern_plan.plan_pattern(problem.pattern, n, n, 256, 512, "cpu", rows, stairs=False)
        bias = _tile_bias.for_case(plan, problem)
        assert bias is not None
        assert bias.nbytes() <= 4 * heads * (2 * n + 256 * 256), (n, bias.nbytes())
    windowed = Problem(heads=heads, seq_len=16384, head_dim=128, causal=True, window=4096, bias="alibi")
    for plan in (
        _pattern_plan.plan_pattern(windowed.pattern, 16384, 16384, 256, 512, "cpu", stairs=False),
        plan_window(windowed.pattern, 16384, 16384, 32, 256, "cpu", stairs=False),
    ):
        bias = _tile_bias.for_case(plan, windowed)
        assert bias is not None and bias.nbytes() < 64 * 2**20  # measured: 29 and 35 MiB


def test_what_the_tiles_cannot_plan_is_unsupported_with_the_reason() -> None:
    registry = load_registry()
    wide = registry.get("chunked").supports(Problem(heads=8, seq_len=4096, bias="alibi"))  # non-causal, no window
    assert wide is not None and "alibi" in wide and "512 MiB" in wide
    banded = registry.get("sliding_window").supports(Problem(heads=8, seq_len=8192, window=1024, bias="alibi"))
    assert banded is not None and "alibi" in banded  # non-causal: each block's band crosses the diagonal
    gathered = registry.get("block_sparse").supports(Problem(seq_len=1024, causal=True, layout="bigbird", bias="alibi"))
    assert gathered is not None and "alibi" in gathered
    assert registry.get("chunked").supports(Problem(heads=8, seq_len=16384, causal=True, bias="alibi")) is None


def test_the_plan_keeps_each_causal_diagonal_its_own_tile_under_alibi() -> None:
    """The staircase join makes a causal case one tile the diagonal crosses, whose ALiBi mask
    would be quadratic; under ALiBi each diagonal stays a ``256 × 256`` tile."""
    problem = Problem(heads=8, seq_len=4096, causal=True, bias="alibi")
    joined = _pattern_plan.plan_pattern(problem.pattern, 4096, 4096, 256, 512)
    assert [(p.lq, p.lk, p.causal) for p in joined.pieces] == [(4096, 4096, True)]
    alone = _pattern_plan.plan_pattern(problem.pattern, 4096, 4096, 256, 512, stairs=False)
    crossing = [p for p in alone.pieces if p.causal]
    assert crossing and all((p.lq, p.lk) == (256, 256) for p in crossing)
    assert alone.pairs() == 4096 * 4096 // 2 + 4096 * 256 // 2  # the causal half and half of each diagonal tile
