"""Tests of the five built-in implementations: naive, chunked, sliding_window, block_sparse, linear.

Every case runs ``attnbench.measure.verify.check``: exact implementations against the float64 reference
within twice SDPA's error, ``linear`` against its own float64 definition. Besides the registered
instances, "small" variants with tiny blocks run the same cases so that short sequences still
cross many tiles, chunks and steps. The cost claims are checked structurally: FLOPs counted by
``torch.utils.flop_counter`` and peak live memory summed from the profiler's allocation events,
never by timing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from attnbench import Implementation, Problem
from attnbench.case.problem import FEATURES
from attnbench.implementations import _dispatch, _fused_work, _plan, _tiles
from attnbench.measure.verify import check
from attnbench.plugins.registry import load_registry

Tensor = torch.Tensor

#: Attribute overrides giving a variant many tiles (and, for the tiled ones, calls of at most 40
#: query rows, so that pieces are split) on short sequences.
SMALL: dict[str, dict[str, int]] = {
    "naive": {},
    "chunked": {"block_q": 16, "block_k": 24, "call_rows": 40},
    "sliding_window": {"tile": 8, "edge_block": 16, "call_rows": 40},
    "block_sparse": {"call_rows": 40},
    "linear": {"chunk": 8, "block": 16, "pass_block": 24},
}
NAMES = tuple(SMALL)
VARIANTS = [*NAMES, *(f"{name}[small]" for name in NAMES if SMALL[name])]
TILED = ("chunked", "sliding_window", "block_sparse")
#: The code paths of the tiled implementations, each forced whatever this machine is: the
#: ``torch.matmul`` back end, and low-precision products in their own dtype or in float32
#: (by default the choice follows ``_dispatch.low_precision_units``).
PATHS: dict[str, dict[str, Any]] = {
    "matmul": {"backend": "matmul"},
    "lowp": {"low_precision": True},
    "fp32": {"low_precision": False},
    "matmul-lowp": {"backend": "matmul", "low_precision": True},
}
PATH_VARIANTS = [f"{name}[{path}]" for name in TILED for path in PATHS]
#: The pattern each implementation needs at the least (merged into every shape case).
BASE: dict[str, dict[str, Any]] = {
    "naive": {},
    "chunked": {},
    "sliding_window": {"window": 24},
    "block_sparse": {"layout": "bigbird:block=32"},
    "linear": {},
}
SHAPES: dict[str, dict[str, int]] = {
    "self": {"seq_len": 200},
    "cross-shorter-q": {"seq_len": 77, "kv_len": 203},
    "cross-longer-q": {"seq_len": 203, "kv_len": 77},
    "gqa": {"heads": 6, "kv_heads": 2, "seq_len": 150},
    "mqa-cross": {"heads": 4, "kv_heads": 1, "seq_len": 90, "kv_len": 171},
    "decode": {"seq_len": 1, "kv_len": 333},
    "batch": {"batch": 3, "seq_len": 129},
}


def make(variant: str) -> Implementation:
    """The registered instance; for ``name[small]`` a fresh one with tiny blocks, for
    ``name[path]`` a fresh one with tiny blocks forced onto that code path (:data:`PATHS`)."""
    name, _, tag = variant.partition("[")
    impl = load_registry().get(name)
    if not tag:
        return impl
    tag = tag.rstrip("]")
    fresh = type(impl)()
    for key, value in {**SMALL[name], **PATHS.get(tag, {})}.items():
        setattr(fresh, key, value)
    return fresh


def problem_for(variant: str, **fields: Any) -> Problem:
    name = variant.partition("[")[0]
    return Problem(**{"heads": 2, "head_dim": 32, **BASE[name], **fields})


def assert_passes(impl: Implementation, problem: Problem, grads: bool = False) -> None:
    assert impl.supports(problem) is None, impl.supports(problem)
    result = check(impl, problem, grads=grads)
    assert result.ok, f"{problem}: {result.failures()}"
    if not impl.exact:
        assert result.full_max_abs_err is not None and math.isfinite(result.full_max_abs_err)


# -- correctness over shapes, dtypes, patterns -------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes(variant: str, shape: str, causal: bool, dtype: str) -> None:
    assert_passes(make(variant), problem_for(variant, causal=causal, dtype=dtype, **SHAPES[shape]))


@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("variant", NAMES)
def test_head_dims(variant: str, head_dim: int) -> None:
    assert_passes(make(variant), problem_for(variant, seq_len=97, kv_len=131, causal=True, head_dim=head_dim))


@pytest.mark.parametrize("variant", NAMES)
def test_float16(variant: str) -> None:
    assert_passes(make(variant), problem_for(variant, seq_len=70, kv_len=90, causal=True, dtype="float16"))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    "shape",
    [{"seq_len": 70}, {"seq_len": 33, "kv_len": 71}, {"seq_len": 71, "kv_len": 33}, {"heads": 4, "kv_heads": 2}],
    ids=["self", "cross-shorter-q", "cross-longer-q", "gqa"],
)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients(variant: str, causal: bool, shape: dict[str, int], dtype: str) -> None:
    impl = make(variant)
    assert "backward" in impl.features
    fields = {"seq_len": 60, **shape}
    assert_passes(impl, problem_for(variant, causal=causal, dtype=dtype, **fields), grads=True)


PATTERNS: dict[str, list[dict[str, Any]]] = {
    "naive": [
        {"window": 17},
        {"window": 17, "causal": True},
        {"layout": "bigbird:block=16"},
        {"layout": "longformer:block=32", "causal": True},
        {"layout": "local:block=16,local=2", "window": 40, "causal": True},
    ],
    "sliding_window": [
        {"window": 1},
        {"window": 1, "causal": True},
        {"window": 24},
        {"window": 500},
        {"window": 500, "causal": True},
    ],
    "block_sparse": [
        {"layout": "bigbird:block=16,random=3,seed=7"},
        {"layout": "longformer:block=32", "causal": True},
        {"layout": "local:block=8,local=2"},
        {"layout": "bigbird:block=16,global=2", "window": 40},
        {"layout": "bigbird:block=16", "window": 40, "causal": True},
    ],
}
PATTERNS["chunked"] = PATTERNS["naive"]
PATTERN_CASES = [(variant, pattern) for variant in VARIANTS for pattern in PATTERNS.get(variant.partition("[")[0], [])]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("lengths", [(150, 150), (70, 190), (190, 70)], ids=["self", "shorter-q", "longer-q"])
@pytest.mark.parametrize(("variant", "pattern"), PATTERN_CASES, ids=[f"{v}-{p}" for v, p in PATTERN_CASES])
def test_patterns(variant: str, pattern: dict[str, Any], lengths: tuple[int, int], dtype: str) -> None:
    seq_len, kv_len = lengths
    problem = Problem(heads=4, kv_heads=2, head_dim=32, seq_len=seq_len, kv_len=kv_len, dtype=dtype, **pattern)
    assert_passes(make(variant), problem)


@pytest.mark.parametrize("variant", ["naive", "chunked", "sliding_window", "block_sparse"])
def test_long_sequence_default_blocks(variant: str) -> None:
    """Long enough that the registered block sizes give several tiles (sampled rows)."""
    impl = make(variant)
    problem = problem_for(variant, heads=2, head_dim=64, seq_len=1100, kv_len=1500, causal=True)
    assert_passes(impl, problem)
    assert_passes(impl, problem.with_(causal=False, seq_len=1500))


def test_rows_that_see_no_key_are_zero() -> None:
    """Causal with Nq > Nk: the first Nq - Nk queries see nothing and must output exact zeros."""
    for variant in VARIANTS:
        impl = make(variant)
        problem = problem_for(variant, seq_len=90, kv_len=40, causal=True)
        q, k, v = problem.make_inputs()
        with torch.no_grad():
            out = impl.prepare(problem)(q, k, v)
        assert torch.all(out[:, :, :50] == 0), variant
        assert torch.isfinite(out).all(), variant


# -- property-based ------------------------------------------------------------------------------


@st.composite
def problems(draw: st.DrawFn, name: str) -> Problem:
    kv_heads, group = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    fields: dict[str, Any] = {
        "batch": draw(st.integers(1, 2)),
        "heads": kv_heads * group,
        "kv_heads": kv_heads,
        "seq_len": draw(st.integers(1, 80)),
        "kv_len": draw(st.integers(1, 80)),
        "head_dim": draw(st.sampled_from([8, 16, 32])),
        "causal": draw(st.booleans()),
        "dtype": draw(st.sampled_from(["float32", "bfloat16"])),
    }
    if name == "sliding_window":
        fields["window"] = draw(st.integers(1, 30))
    elif name in ("naive", "chunked", "block_sparse"):
        fields["window"] = draw(st.one_of(st.just(0), st.integers(1, 30)))
    if name in ("naive", "chunked", "block_sparse"):
        layouts = ["bigbird:block=8", "longformer:block=16", "local:block=4,local=2", "bigbird:block=8,random=3,seed=3"]
        fields["layout"] = draw(st.sampled_from(layouts if name == "block_sparse" else ["dense", *layouts]))
    return Problem(**fields)


@pytest.mark.parametrize("variant", VARIANTS)
def test_property_random_problems(variant: str) -> None:
    impl = make(variant)
    name = variant.partition("[")[0]

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
    @given(problem=problems(name), grads=st.booleans())
    def run(problem: Problem, grads: bool) -> None:
        assert_passes(impl, problem, grads=grads and problem.seq_len * problem.kv_len <= 2000)

    run()


# -- declarations and refusals -------------------------------------------------------------------


DECLARED = {
    "naive": (True, {"full", "causal", "window", "block-sparse"}, (2.0, 2.0)),
    "chunked": (True, {"full", "causal", "window", "block-sparse"}, (2.0, 1.0)),
    "sliding_window": (True, {"window"}, (1.0, 1.0)),
    "block_sparse": (True, {"block-sparse"}, (1.0, 1.0)),
    "linear": (False, {"kernelized"}, (1.0, 1.0)),
}


@pytest.mark.parametrize("name", NAMES)
def test_declarations(name: str) -> None:
    impl = make(name)
    exact, computes, growth = DECLARED[name]
    assert impl.name == name and impl.source == "built-in"
    assert (impl.exact, set(impl.computes), (impl.growth.time, impl.growth.memory)) == (exact, computes, growth)
    assert impl.description and "\n" not in impl.description
    assert impl.approximates == ("" if exact else "softmax attention")
    assert impl.available().ok
    assert impl.features <= set(FEATURES)


@pytest.mark.parametrize(
    ("name", "fields", "word"),
    [
        ("sliding_window", {"window": 0}, "window"),
        ("sliding_window", {"window": 0, "causal": True}, "window"),
        ("sliding_window", {"window": 8, "layout": "bigbird"}, "layout"),
        ("block_sparse", {}, "layout"),
        ("block_sparse", {"causal": True, "window": 16}, "layout"),
        ("linear", {"window": 8}, "window"),
        ("linear", {"layout": "longformer"}, "layout"),
    ],
)
def test_unsupported_problems_give_a_reason(name: str, fields: dict[str, Any], word: str) -> None:
    reason = make(name).supports(Problem(heads=2, seq_len=64, **fields))
    assert isinstance(reason, str) and word in reason


# -- each check can fail -------------------------------------------------------------------------


WRONG: dict[
    str, tuple[dict[str, Any], dict[str, Any]]
] = {  # a problem, and the subtly different one an implementation is prepared for instead
    "naive": ({"causal": True, "seq_len": 80, "kv_len": 100}, {"causal": False}),
    "chunked": ({"window": 9, "seq_len": 80}, {"window": 10}),
    "sliding_window": ({"window": 9, "causal": True, "seq_len": 80}, {"window": 8}),
    "block_sparse": ({"layout": "bigbird:block=16", "seq_len": 80}, {"layout": "bigbird:block=16,seed=1"}),
    "linear": ({"causal": True, "seq_len": 80, "kv_len": 100}, {"kv_len": 100, "causal": False}),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_check_rejects_a_wrong_answer(variant: str) -> None:
    """The harness check used above does catch a subtly wrong pattern: these tests can fail."""
    name = variant.partition("[")[0]
    impl = make(variant)
    right, change = WRONG[name]
    problem = Problem(heads=2, head_dim=32, **right)
    wrong_fn = impl.prepare(problem.with_(**change))
    assert not check(impl, problem, fn=wrong_fn).ok


def test_linear_is_held_to_its_own_definition() -> None:
    impl = make("linear")
    problem = Problem(heads=2, head_dim=32, seq_len=150, kv_len=190, causal=True)
    result = check(impl, problem)
    assert result.ok
    assert result.full_max_abs_err is not None and math.isfinite(result.full_max_abs_err)
    assert result.full_max_abs_err > 0  # it is not softmax attention (how far is reported, not judged)
    q, k, v = problem.make_inputs()
    mine = impl.reference(q, k, v, problem)  # [B, H, Nq, D] float64
    assert mine.dtype == torch.float64 and mine.shape == q.shape
    # Its reference is its own formula, not the harness's softmax reference:
    assert not torch.allclose(mine, Implementation.reference(impl, q, k, v, problem))


# -- cost claims, structurally -------------------------------------------------------------------


def _flops(impl: Implementation, problem: Problem) -> int:
    """FLOPs counted by ``torch.utils.flop_counter``, which also sees the tiles run by PyTorch's
    CPU FlashAttention kernel (it has no formula of its own for it: ``_fused_work.FLOP_FORMULAS``
    counts the pairs that kernel computes, whole 512-key blocks included)."""
    q, k, v = problem.make_inputs()
    fn = impl.prepare(problem)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_fused_work.FLOP_FORMULAS) as counter:
        fn(q, k, v)
    return int(counter.get_total_flops())


def _peak_bytes(fn: Callable[[Tensor, Tensor, Tensor], Tensor], problem: Problem) -> int:
    """Peak of live bytes allocated during one call: the running sum of the profiler's
    allocation (+) and release (−) events, in time order."""
    q, k, v = problem.make_inputs()
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(q, k, v)
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


COST_CASES: dict[str, dict[str, Any]] = {
    "chunked": {"causal": True},
    "sliding_window": {"window": 64, "causal": True},
    "block_sparse": {"layout": "bigbird"},
    "linear": {"causal": True},
}


@pytest.mark.parametrize("name", list(COST_CASES))
def test_memory_grows_linearly(name: str) -> None:
    impl = make(name)
    small, large = (Problem(heads=1, head_dim=32, seq_len=n, **COST_CASES[name]) for n in (4096, 8192))
    peak_small, peak_large = (_peak_bytes(impl.prepare(p), p) for p in (small, large))
    assert peak_large <= 2.5 * peak_small, (peak_small, peak_large)
    assert peak_large < 8192 * 8192, "a quarter of one float32 score matrix"


def test_memory_probe_sees_quadratic_growth() -> None:
    """The probe above is able to fail: naive attention's peak grows about 4× per doubling."""
    impl = make("naive")
    small, large = (Problem(heads=1, head_dim=32, seq_len=n) for n in (1024, 2048))
    peak_small, peak_large = (_peak_bytes(impl.prepare(p), p) for p in (small, large))
    assert peak_large >= 3.5 * peak_small
    assert peak_large >= 2048 * 2048 * 4


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("sliding_window", {"window": 64, "causal": True}),
        ("sliding_window", {"window": 64}),
        ("block_sparse", {"layout": "bigbird", "causal": True}),
        ("block_sparse", {"layout": "longformer"}),
        ("linear", {}),
        ("linear", {"causal": True}),
    ],
)
def test_work_grows_linearly(name: str, fields: dict[str, Any]) -> None:
    impl = make(name)
    small, large = (Problem(heads=1, head_dim=32, seq_len=n, **fields) for n in (2048, 4096))
    work_small, work_large = _flops(impl, small), _flops(impl, large)
    assert 0 < work_large <= 2.2 * work_small
    if impl.exact:  # at most 2.5× the work of the pairs the pattern asks for
        assert work_large <= 2.5 * 4 * 32 * large.pattern.pairs(4096, 4096)


def test_chunked_skips_masked_tiles() -> None:
    impl = make("chunked")
    tile = cast(Any, impl).block_q + cast(Any, impl).block_k  # class attributes of Chunked
    full = _flops(impl, Problem(heads=1, head_dim=32, seq_len=4096))
    assert full == 4 * 32 * 4096 * 4096
    assert _flops(impl, Problem(heads=1, head_dim=32, seq_len=4096, causal=True)) <= 0.6 * full
    window = Problem(heads=1, head_dim=32, seq_len=4096, window=64, causal=True)
    assert _flops(impl, window) <= 4 * 32 * 4096 * (64 + tile)
    layout = Problem(heads=1, head_dim=32, seq_len=4096, layout="longformer")
    assert _flops(impl, layout) <= 0.4 * full


def test_block_sparse_drops_kept_blocks_the_causal_mask_hides() -> None:
    """A local layout under causal keeps the block above the diagonal; it must not be computed."""
    problem = Problem(heads=1, head_dim=32, seq_len=4096, layout="local", causal=True)
    needed = 4 * 32 * problem.pattern.pairs(4096, 4096)
    assert _flops(make("block_sparse"), problem) <= 1.5 * needed


# -- the tiled implementations' code paths and plans ---------------------------------------------


PATH_CASES = [
    (variant, dtype)
    for variant in PATH_VARIANTS
    for dtype in ("float32", "bfloat16", "float16")
    if dtype != "float32" or not variant.endswith(("lowp]", "fp32]"))  # float32 has no low-precision choice
]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", ["self", "cross-shorter-q", "cross-longer-q", "mqa-cross"])
@pytest.mark.parametrize(("variant", "dtype"), PATH_CASES, ids=[f"{v}-{d}" for v, d in PATH_CASES])
def test_paths(variant: str, dtype: str, shape: str, causal: bool) -> None:
    """Each path forced (matmul back end; low-precision products in their own dtype or in
    float32) is exact on any machine, gradients included except through low-precision tiles
    (opt-in, see :func:`test_low_precision_backward_is_opt_in`)."""
    problem = problem_for(variant, causal=causal, dtype=dtype, **SHAPES[shape])
    lowp = variant.endswith("lowp]")
    assert_passes(make(variant), problem, grads=not lowp and problem.seq_len * problem.kv_len <= 40000)


@pytest.mark.parametrize("variant", [f"{name}[matmul-lowp]" for name in TILED])
def test_low_precision_backward_is_opt_in(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Autograd through bfloat16 tiles is within FlashAttention's bound (errors of one bfloat16
    unit at the gradients' largest magnitude, as the plain bfloat16 computation's own), yet far
    less accurate than float32 tiles: so a machine with bfloat16 units computes a differentiated
    call in float32 unless low precision is asked for by name; the forward alone stays in
    bfloat16. (Judged row by row against float64, the criterion before, the forced path failed dq:
    0.0129 against a bound of 0.00099 for chunked, causal, N=200.)"""
    problem = problem_for(variant, causal=True, dtype="bfloat16", **SHAPES["self"])
    forced = check(make(variant), problem, grads=True)
    assert forced.ok, forced.failures()
    monkeypatch.setattr(_dispatch, "low_precision_units", lambda dtype, device: True)
    auto = make(variant.replace("-lowp]", "]").replace("[lowp]", ""))
    chosen = check(auto, problem, grads=True)
    assert chosen.ok, chosen.failures()
    for low, high in zip(forced.verdicts[1:], chosen.verdicts[1:], strict=True):  # dq, dk, dv
        assert high.max_abs_err * 10 < low.max_abs_err, (low, high)


@pytest.mark.parametrize("low_precision", [True, False])
def test_low_precision_dispatch(monkeypatch: pytest.MonkeyPatch, low_precision: bool) -> None:
    """bfloat16 is computed in bfloat16 exactly where the machine has units for it."""
    monkeypatch.setattr(_dispatch, "low_precision_units", lambda dtype, device: low_precision)
    work = torch.bfloat16 if low_precision else torch.float32
    assert _dispatch.compute_dtype(torch.bfloat16, "cpu", None) == work
    assert _dispatch.compute_dtype(torch.bfloat16, "cpu", True) == torch.bfloat16
    assert _dispatch.compute_dtype(torch.bfloat16, "cpu", False) == torch.float32
    assert _dispatch.compute_dtype(torch.float32, "cpu", True) == torch.float32
    seen: list[torch.dtype] = []
    real = _tiles._fused_piece

    def spy(q: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
        seen.append(q.dtype)
        return real(q, *args)

    monkeypatch.setattr(_tiles, "_fused_piece", spy)
    problem = Problem(heads=2, head_dim=32, seq_len=100, causal=True, dtype="bfloat16")
    assert_passes(make("chunked"), problem)
    assert seen and set(seen) == {work}


def test_has_bf16_units_matches_mkldnn() -> None:
    assert _dispatch.low_precision_units(torch.bfloat16, "cpu") == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert not _dispatch.low_precision_units(torch.float32, "cpu")


def prepared_plan(name: str, problem: Problem) -> _plan.Plan:
    """The plan an implementation prepares (read from the prepared call's closure)."""
    fn = make(name).prepare(problem)
    cells = [c.cell_contents for c in getattr(fn, "__closure__", None) or ()]
    plans = [c for c in cells if isinstance(c, _plan.Plan)]
    assert len(plans) == 1
    return plans[0]


def test_chunked_plans() -> None:
    full = prepared_plan("chunked", Problem(heads=8, head_dim=64, seq_len=4096))
    assert [(p.n, p.lq, p.lk, p.causal, p.keep is None) for p in full.pieces] == [(1, 4096, 4096, False, True)]
    causal = prepared_plan("chunked", Problem(heads=8, head_dim=64, seq_len=4096, causal=True))
    assert [(p.n, p.lq, p.lk, p.causal) for p in causal.pieces] == [(1, 4096, 4096, True)]  # the kernel's own causal
    assert full.modes == causal.modes == ("base",)
    # cross attention: the keys before the first query (a tall tile) and the causal square, merged
    cross = prepared_plan("chunked", Problem(heads=8, head_dim=64, seq_len=1024, kv_len=3072, causal=True))
    assert sorted((p.lq, p.k0, p.lk, p.causal) for p in cross.pieces) == [
        (1024, 0, 2048, False),
        (1024, 2048, 1024, True),
    ]
    window = prepared_plan("chunked", Problem(heads=8, head_dim=64, seq_len=4096, window=256, causal=True))
    assert len(window.pieces) <= 6  # batched over query blocks, not one call per block
    assert window.pairs() <= 4096 * (256 + 256 + 256)


def test_sliding_window_plan() -> None:
    problem = Problem(heads=8, head_dim=64, seq_len=4096, window=256, causal=True)
    plan = prepared_plan("sliding_window", problem)
    interior = plan.pieces[0]
    assert interior.keep is not None and interior.keep.shape[0] == 1  # one band mask shared by every tile
    assert interior.k_step == interior.q_step == interior.lq == 32 and interior.lk == 32 + 255
    assert sum(p.n * p.lq for p in plan.pieces) == 4096 and set(plan.modes) == {"assign"}
    assert len(plan.pieces) <= 4
    assert plan.pairs() <= 4096 * (256 + 32)


def test_block_sparse_plan() -> None:
    problem = Problem(heads=8, head_dim=64, seq_len=4096, layout="bigbird")
    plan = prepared_plan("block_sparse", problem)
    gathered = [p for p in plan.pieces if p.keys is not None]
    assert len(gathered) == 1 and gathered[0].lk == 2 * 64  # the two random blocks of every row block
    assert len(plan.pieces) <= 6  # global row, band, global column, random, an edge
    assert plan.pairs() <= 1.1 * problem.pattern.pairs(4096, 4096)


@pytest.mark.parametrize(
    ("variant", "fields"),
    [
        ("chunked", {"seq_len": 4096, "causal": True, "window": 300}),
        ("chunked", {"seq_len": 3000, "kv_len": 4096, "causal": True}),
        ("sliding_window", {"seq_len": 4096, "window": 256, "causal": True}),
        ("sliding_window", {"seq_len": 4000, "kv_len": 4100, "window": 200}),
        ("block_sparse", {"seq_len": 4096, "layout": "bigbird"}),
        ("block_sparse", {"seq_len": 4000, "kv_len": 4100, "layout": "bigbird", "causal": True}),
        ("block_sparse[small]", {"seq_len": 2500, "layout": "longformer", "heads": 4, "kv_heads": 2}),
    ],
)
def test_long_sequences(variant: str, fields: dict[str, Any]) -> None:
    """Thousands of keys with the registered blocks (sampled rows), odd lengths included."""
    assert_passes(make(variant), Problem(**{"heads": 2, "head_dim": 64, **fields}))


@pytest.mark.parametrize("variant", ["chunked[small]", "sliding_window[small]", "block_sparse[small]"])
def test_backward_repeats_and_calls_do_not_share_outputs(variant: str) -> None:
    """A retained graph gives the same gradients twice (saved tensors untouched by later calls,
    gathered keys kept from call to call included), and a second call leaves the first's output."""
    problem = problem_for(variant, seq_len=150, causal=True)
    fn = make(variant).prepare(problem)
    q, k, v = (t.requires_grad_(True) for t in problem.make_inputs())
    out = fn(q, k, v)
    first = out.detach().clone()
    dout = torch.randn_like(out)
    out.backward(dout, retain_graph=True)
    grads = [t.grad.clone() for t in (q, k, v)]  # type: ignore[union-attr]
    with torch.no_grad():
        other = fn(*(torch.randn_like(t) for t in (q, k, v)))
    assert not torch.equal(other, first)
    assert torch.equal(out.detach(), first)
    for t in (q, k, v):
        t.grad = None
    out.backward(dout)
    for t, g in zip((q, k, v), grads, strict=True):
        assert torch.equal(t.grad, g)  # type: ignore[arg-type]


def test_fused_pairs_counts_the_kernels_blocks() -> None:
    """The FLOP formula follows the CPU kernel: whole 512-key blocks, causal rows up to their
    split's last key."""
    assert _fused_work.fused_pairs(100, 300, False) == 100 * 300
    assert _fused_work.fused_pairs(64, 64, True) == 64 * 64  # two splits of 32 rows, each one block of 64 keys
    assert _fused_work.fused_pairs(1024, 1024, True) == sum(
        256 * min(1024, -(-(m + 256) // 512) * 512) for m in range(0, 1024, 256)
    )
    assert _fused_work.fused_pairs(1024, 1024, True) < 0.8 * 1024 * 1024


def test_linear_fast_path_matches_autograd_path() -> None:
    """The in-place blocked path (no autograd) and the functional one compute the same values."""
    impl = make("linear[small]")
    for fields in (
        {"seq_len": 150, "causal": True},
        {"seq_len": 77, "kv_len": 203, "causal": True},
        {"seq_len": 203, "kv_len": 77, "causal": True},
        {"seq_len": 99},
    ):
        problem = Problem(heads=4, kv_heads=2, head_dim=32, **fields)
        fn = impl.prepare(problem)
        q, k, v = problem.make_inputs()
        with torch.no_grad():
            fast = fn(q, k, v)
        slow = fn(*(t.clone().requires_grad_(True) for t in (q, k, v))).detach()
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_linear_long(causal: bool) -> None:
    assert_passes(make("linear"), Problem(heads=2, head_dim=64, seq_len=5000, kv_len=5100, causal=causal))


# -- linear_quadratic: linear attention's function the quadratic way (linear's peer) ---------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_linear_quadratic_shapes(shape: str, causal: bool, dtype: str) -> None:
    """Held to linear's own definition, with blocks of 16 rows so that short sequences cross many."""
    impl = type(load_registry().get("linear_quadratic"))()
    impl.row_block = 16
    assert_passes(impl, Problem(**{"heads": 2, "head_dim": 32, "causal": causal, "dtype": dtype, **SHAPES[shape]}))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_linear_quadratic_computes_linears_function_at_4k(causal: bool) -> None:
    """At a length the kernels suite times, the quadratic form and linear's O(N) form agree to
    float32 rounding; a 5% error in the normalizer (the denominator) of either would not."""
    problem = Problem(heads=2, head_dim=64, seq_len=4096, kv_len=4160, causal=causal)
    q, k, v = problem.make_inputs()
    with torch.no_grad():
        quadratic = load_registry().get("linear_quadratic").prepare(problem)(q, k, v)
        linear = load_registry().get("linear").prepare(problem)(q, k, v)
    torch.testing.assert_close(quadratic, linear, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(quadratic, linear * 1.05, rtol=1e-4, atol=1e-5)


def test_linear_quadratic_catches_a_wrong_causal_offset() -> None:
    """The check fails a quadratic form whose causal diagonal is aligned top-left instead of
    bottom-right for cross attention (Nk - Nq = 20: each row misses its last 20 keys)."""
    impl = load_registry().get("linear_quadratic")
    problem = Problem(heads=2, head_dim=32, seq_len=80, kv_len=100, causal=True)
    wrong = impl.prepare(problem.with_(kv_len=80))

    def fn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return wrong(q, k[:, :, :80], v[:, :, :80])

    assert not check(impl, problem, fn=fn).ok
    assert check(impl, problem).ok
