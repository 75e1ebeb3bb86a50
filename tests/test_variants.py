"""Soft-capping, ALiBi and sinks: the case fields, the float64 reference against an outside
definition, the implementations that take them, planted bugs, and the model presets."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from attnbench import Implementation, Problem
from attnbench.case.reference import softmax_attention, softmax_attention_grads
from attnbench.case.variants import alibi_slopes, sink_logits
from attnbench.implementations.naive import ScoreChanges, naive_attention
from attnbench.measure.verify import check
from attnbench.plugins.registry import load_registry
from attnbench.sweep.models import ModelConfigError, load_config, shapes_of, suite_text
from attnbench.sweep.suite import SuiteError, parse_suite

Tensor = torch.Tensor
VARIANTS = ("softcap", "alibi", "sinks")


def fa_attention_ref(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, window: int, softcap: float, slopes: Tensor | None,
    sink: Tensor | None,
) -> Tensor:  # fmt: skip
    """FlashAttention's test reference (``attention_ref`` in its tests) as it defines each
    variant, in float64 and written here from that definition: scores ``q kᵀ / sqrt(D)``, then
    ``softcap·tanh(s/softcap)``, then the ALiBi bias ``−slope·|i + Nk − Nq − j|``, then the
    causal/local mask (bottom-right), then the softmax with the learnable sink joining its
    denominator (``exp(s − max(sink, rowmax))`` over ``Σ + exp(sink − max)``), times ``v``.
    ``q`` ``[B, H, Nq, D]``, ``k``/``v`` ``[B, H, Nk, D]`` (heads already repeated)."""
    nq, nk, d = q.shape[2], k.shape[2], q.shape[3]
    s = q @ k.transpose(-1, -2) / math.sqrt(d)  # [B, H, Nq, Nk]
    if softcap > 0:
        s = torch.tanh(s / softcap) * softcap
    row = torch.arange(nq)[:, None] + nk - nq  # [Nq, 1]
    col = torch.arange(nk)[None, :]  # [1, Nk]
    if slopes is not None:
        s = s - slopes[:, None, None] * (row - col).abs()
    hidden = torch.zeros(nq, nk, dtype=torch.bool)
    if causal:
        hidden |= col > row
    if window:
        hidden |= (row - col).abs() >= window
    s = s.masked_fill(hidden, float("-inf"))
    if sink is None:
        p = torch.softmax(s, dim=-1)
    else:
        top = torch.maximum(s.amax(dim=-1, keepdim=True), sink[:, None, None])
        e = torch.exp(s - top)
        p = e / (e.sum(-1, keepdim=True) + torch.exp(sink[:, None, None] - top))
    return p @ v


CASES = [
    dict(softcap=5.0),
    dict(bias="alibi"),
    dict(sinks="learned"),
    dict(softcap=20.0, bias="alibi", sinks="learned", causal=True),
    dict(bias="alibi", sinks="learned", causal=True, window=24, kv_heads=2),
    dict(bias="alibi", softcap=8.0, kv_len=96),  # cross attention: queries aligned bottom-right
]


@pytest.mark.parametrize("fields", CASES, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_the_reference_computes_what_flashattention_s_test_reference_defines(fields: dict) -> None:
    problem = Problem(batch=2, heads=4, seq_len=64, head_dim=16, dtype="float64", seed=3, **fields)
    q, k, v = problem.make_inputs()
    g = problem.heads // problem.kv_heads
    slopes = alibi_slopes(problem.heads) if problem.bias == "alibi" else None
    sink = sink_logits(problem.heads, problem.seed) if problem.sinks != "none" else None
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    kr, vr = (t.repeat_interleave(g, dim=1) for t in leaves[1:])
    want = fa_attention_ref(leaves[0], kr, vr, problem.causal, problem.window, problem.softcap, slopes, sink)
    got = softmax_attention(q, k, v, problem)
    assert (got - want.detach()).abs().max() < 1e-12
    dout = torch.randn(want.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want.backward(dout)
    grads = softmax_attention_grads(q, k, v, dout, problem)
    for name, mine, theirs in zip(("dq", "dk", "dv"), (grads.dq, grads.dk, grads.dv), leaves, strict=True):
        assert theirs.grad is not None
        assert (mine - theirs.grad).abs().max() < 1e-11, name


@pytest.mark.parametrize("heads", [1, 6, 8, 12, 32, 40])
def test_alibi_slopes_are_bloom_s(heads: int) -> None:
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    ones = torch.ones(1, 8, dtype=torch.long)
    theirs = bloom.build_alibi_tensor(ones, heads, torch.float64)  # [H, 1, N]: slope_h · j
    assert torch.allclose(alibi_slopes(heads), theirs[:, 0, 1], rtol=1e-6, atol=0)  # theirs: float32


def test_alibi_slopes_by_hand() -> None:
    assert alibi_slopes(8).tolist() == [2.0**-i for i in range(1, 9)]


def test_sink_logits_are_seeded_and_in_range() -> None:
    a, b = sink_logits(16, 0), sink_logits(16, 1)
    assert torch.equal(a, sink_logits(16, 0)) and not torch.equal(a, b)
    assert bool(((a >= 1.0) & (a < 8.0)).all())


class _Planted(Implementation):
    """naive with one planted bug in what it does to the scores."""

    exact = True
    dtypes = ("float32", "bfloat16", "float16")
    features = frozenset({"causal", "window", "gqa", "cross", "backward", *VARIANTS})

    def changes(self, problem: Problem) -> ScoreChanges:
        raise NotImplementedError

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        mask = None if problem.pattern.is_full else problem.pattern.mask(problem.seq_len, problem.kv_len)
        return naive_attention(q, k, v, problem.scale, mask, self.changes(problem))


class Cap45(_Planted):
    def changes(self, problem: Problem) -> ScoreChanges:
        planted = ScoreChanges.of(problem)
        assert planted is not None
        return replace(planted, softcap=45.0)


class AlibiReversed(_Planted):
    def changes(self, problem: Problem) -> ScoreChanges:
        planted = ScoreChanges.of(problem)
        assert planted is not None and planted.bias is not None
        hkv, g = planted.bias.shape[:2]
        flipped = planted.bias.reshape(hkv * g, *planted.bias.shape[2:]).flip(0)  # the last head's slope first
        return replace(planted, bias=flipped.reshape(planted.bias.shape))


class SinkDropped(_Planted):
    def changes(self, problem: Problem) -> ScoreChanges:
        planted = ScoreChanges.of(problem)
        assert planted is not None
        return replace(planted, sink=None)


PLANTED = [
    (Cap45(), dict(softcap=50.0), ("float32", "bfloat16", "float16")),
    (AlibiReversed(), dict(bias="alibi"), ("float32", "bfloat16", "float16")),
    (SinkDropped(), dict(sinks="learned"), ("float32", "bfloat16", "float16")),
]


@pytest.mark.parametrize(
    "impl,fields,dtypes", PLANTED, ids=lambda x: type(x).__name__ if isinstance(x, _Planted) else ""
)
def test_planted_variant_bugs_are_caught_where_the_true_variant_passes(
    impl: _Planted, fields: dict, dtypes: tuple[str, ...]
) -> None:
    """At N = 2048 with grouped heads and the causal mask, in every dtype: naive, which computes
    the variant, passes; the plant does not (a cap of 45 for 50 in bfloat16 too, with the scores
    spread to two thirds of the cap: see attnbench.case.variants)."""
    naive = load_registry().get("naive")
    for dtype in dtypes:
        problem = Problem(heads=8, kv_heads=2, seq_len=2048, head_dim=64, dtype=dtype, causal=True, **fields)
        assert check(naive, problem, max_rows=64).ok, dtype
        caught = check(impl, problem, max_rows=64)
        assert not caught.ok, (dtype, caught.figures())


def test_planted_gradient_through_the_cap_is_caught() -> None:
    """A backward that forgets the cap's slope (gradients as if uncapped) fails dq and dk."""

    class NoCapSlope(_Planted):
        def changes(self, problem: Problem) -> ScoreChanges:
            planted = ScoreChanges.of(problem)
            assert planted is not None
            return replace(planted, softcap=0.0)

        def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
            right = naive_attention(q, k, v, problem.scale, None, ScoreChanges.of(problem))
            wrong = naive_attention(q, k, v, problem.scale, None, self.changes(problem))
            return right.detach() + (wrong - wrong.detach())  # the capped output, the uncapped gradient

    problem = Problem(heads=4, seq_len=512, head_dim=32, mode="forward_backward", softcap=30.0)
    assert check(load_registry().get("naive"), problem, max_rows=64).ok
    caught = check(NoCapSlope(), problem, max_rows=64)
    assert caught.output.ok and not caught.ok
    failed = {v.what for v in caught.verdicts if not v.ok}
    assert {"dq", "dk"} <= failed


@pytest.mark.parametrize("name", ["naive", "sdpa", "sdpa_math"])
def test_implementations_compute_the_variants_they_declare(name: str) -> None:
    impl = load_registry().get(name)
    for fields in CASES:
        for mode in ("forward", "forward_backward"):
            problem = Problem(heads=4, seq_len=128, head_dim=32, dtype="bfloat16", mode=mode, **fields)
            if impl.supports(problem) is not None:
                assert name != "naive", (fields, impl.supports(problem))
                continue
            result = check(impl, problem, max_rows=64)
            assert result.ok, (fields, mode, result.figures())


def test_what_an_implementation_cannot_compute_is_unsupported_with_the_feature_named() -> None:
    registry = load_registry()
    assert "softcap" in (registry.get("sdpa").supports(Problem(softcap=50.0)) or "")
    assert "sinks" in (registry.get("sdpa").supports(Problem(sinks="learned")) or "")
    assert "alibi" in (registry.get("chunked").supports(Problem(heads=8, seq_len=4096, bias="alibi")) or "")
    assert registry.get("sdpa").supports(Problem(bias="alibi", causal=True)) is None
    flex_sinks = registry.get("flex").supports(Problem(sinks="learned"))
    assert flex_sinks is not None and "return_lse" in flex_sinks


@pytest.mark.parametrize(
    "fields,words",
    [
        (dict(softcap=-1.0), "softcap"),
        (dict(bias="t5"), "bias"),
        (dict(sinks="last:4"), "sinks"),
        (dict(sinks="first:4", documents="uniform:2"), "sinks"),
        (dict(mode="decode", seq_len=1, kv_len=64, sinks="first:4", window=16), "KV cache"),
    ],
)
def test_invalid_variants_are_refused_naming_the_key(fields: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Problem(**fields)


def test_a_suite_takes_an_integer_soft_cap_and_labels_the_variants() -> None:
    suite = parse_suite(
        '[suite]\nname = "v"\nimplementations = ["naive"]\n[grid]\nseq_len = [64]\nsoftcap = [50]\n'
        'bias = ["none", "alibi"]\nsinks = ["learned"]\ndtype = ["float32"]\ncausal = [true]\n',
        "v.toml",
    )
    labels = sorted(case.label() for case in suite.cases(["cpu"]))
    assert len(labels) == 2 and all("cap50" in x and "sinks:learned" in x for x in labels)
    assert sum("alibi" in x for x in labels) == 1
    with pytest.raises(SuiteError, match="softcap"):
        parse_suite(
            '[suite]\nname = "v"\nimplementations = ["naive"]\n[grid]\nseq_len = [64]\nsoftcap = ["x"]\n', "v.toml"
        )


@pytest.mark.parametrize(
    "preset,field,value",
    [
        ("gemma-2-9b", "softcap", 50.0),
        ("bloom-7b1", "bias", "alibi"),
        ("gpt-oss-20b", "sinks", "learned"),
        ("deepseek-v3", "v_head_dim", 128),
    ],
)
def test_model_presets_compute_their_variants(preset: str, field: str, value: object) -> None:
    name, config = load_config(preset)
    shapes = shapes_of(name, config)
    assert shapes.variants == {field: value}
    suite = parse_suite(suite_text(shapes), f"{preset}.toml")
    # SDPA cannot soft-cap or sink: the baseline must compute the variant
    assert suite.baseline == ("naive" if field in ("softcap", "sinks") else "sdpa")
    cases = suite.cases(["cpu"])
    decodes = [case for case in cases if case.kind.reads_cache]
    assert decodes and all(getattr(case, field) == value for case in cases if case not in decodes)
    if field == "v_head_dim":  # MLA decodes in its absorbed form: one latent KV head, values its first columns
        assert all((c.kv_heads, c.head_dim, c.v_head_dim, c.latent) == (1, 576, 512, True) for c in decodes)
    else:  # the decode grid computes the variant too
        assert all(getattr(case, field) == value for case in decodes)


def test_gpt_oss_alternates_its_window_from_layer_types() -> None:
    shapes = shapes_of(*load_config("gpt-oss-20b"))
    assert shapes.window == 128 and shapes.alternating_window and (shapes.heads, shapes.kv_heads) == (64, 8)


@pytest.mark.parametrize("key", ["qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"])
def test_a_config_with_part_of_latent_attention_is_refused_naming_the_missing_key(key: str) -> None:
    name, config = load_config("deepseek-v3")
    with pytest.raises(ModelConfigError, match=key):
        shapes_of(name, {k: v for k, v in config.items() if k != key})


def test_deepseek_v3_prefills_in_its_own_form_and_decodes_in_the_absorbed_one() -> None:
    shapes = shapes_of(*load_config("deepseek-v3"))
    assert (shapes.heads, shapes.kv_heads, shapes.head_dim, shapes.v_head_dim) == (128, 128, 192, 128)
    assert (shapes.latent, shapes.rope) == (512, 64)
    cases = parse_suite(suite_text(shapes), "deepseek.toml").cases(["cpu"])
    prefill = [c for c in cases if not c.kind.reads_cache]
    assert prefill and all((c.kv_heads, c.head_dim, c.dv, c.latent) == (128, 192, 128, False) for c in prefill)
    decodes = [c for c in cases if c.kind.reads_cache]
    assert {c.kv_len for c in decodes} >= {1024, 163840} and all(c.heads == 128 for c in decodes)


def test_latent_attention_without_kv_lora_rank_writes_no_decode_grid() -> None:
    """Without the latent's width the absorbed form is unknown: no decode grid, and the suite says why."""
    name, config = load_config("deepseek-v3")
    shapes = shapes_of(name, {k: v for k, v in config.items() if k != "kv_lora_rank"})
    text = suite_text(shapes)
    assert "no kv_lora_rank" in text
    assert not any(c.kind.reads_cache for c in parse_suite(text, "d.toml").cases(["cpu"]))


def test_a_config_s_dtype_key_is_read_as_torch_dtype_is() -> None:
    name, config = load_config("mistral-7b")
    config = {k: v for k, v in config.items() if k != "torch_dtype"} | {"dtype": "float16"}
    assert shapes_of(name, config).dtype == "float16"


def test_a_function_plugin_receives_the_variant_keywords_it_declares_and_computes_them() -> None:
    """A plugin written against the keywords (soft-cap, slopes, sink logits) is judged like any:
    exact where it applies them, inaccurate where it drops one."""
    from attnbench.plugins.contract import FunctionImplementation

    def plugin(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, softcap: float,
               alibi_slopes: Tensor | None, sinks: Tensor | None, drop_sink: bool = False) -> Tensor:  # fmt: skip
        b, h, n, _ = q.shape
        g = h // k.shape[1]
        s = q @ k.repeat_interleave(g, 1).transpose(-1, -2) * scale  # [B, H, N, N]
        s = torch.tanh(s / softcap) * softcap if softcap else s
        pos = torch.arange(n, dtype=s.dtype)
        if alibi_slopes is not None:
            s = s - alibi_slopes.to(s.dtype)[:, None, None] * (pos[:, None] - pos[None, :]).abs()
        if causal:
            s = s.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
        if sinks is not None and not drop_sink:
            s = torch.cat([s, sinks.to(s.dtype)[None, :, None, None].expand(b, h, n, 1)], dim=-1)
        return torch.softmax(s, dim=-1)[..., :n] @ v.repeat_interleave(g, 1)

    features = ("causal", "gqa", "softcap", "alibi", "sinks")
    honest = FunctionImplementation("kw", plugin, features=features)
    dropping = FunctionImplementation("kw-drop", lambda *a, **kw: plugin(*a, **kw, drop_sink=True), features=features)
    problem = Problem(heads=4, kv_heads=2, seq_len=256, head_dim=32, causal=True, softcap=30.0, bias="alibi",
                      sinks="learned")  # fmt: skip
    assert check(honest, problem, max_rows=64).ok
    assert not check(dropping, problem, max_rows=64).ok
    assert check(honest, problem.with_(softcap=0.0, bias="none", sinks="none"), max_rows=64).ok  # keywords: none
    plain = FunctionImplementation("plain", lambda q, k, v, causal, scale: q, features=("causal",))
    assert "softcap" in (plain.supports(problem) or "")


class ValuesScaledAsKeys(Implementation):
    """Multi-head latent attention with the values' head dimension used where the keys' belongs:
    the scores scaled by ``1/sqrt(Dv)`` instead of ``1/sqrt(D)``."""

    exact = True
    dtypes = ("float32", "bfloat16", "float16")
    features = frozenset({"causal", "gqa", "backward", "v_head_dim"})

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        mask = None if problem.pattern.is_full else problem.pattern.mask(problem.seq_len, problem.kv_len)
        return naive_attention(q, k, v, problem.dv**-0.5, mask)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_latent_attention_s_two_head_dimensions_and_a_planted_mix_up(dtype: str) -> None:
    """DeepSeek-V3's prefill shapes (keys 192, values 128), causal at N = 2048: naive and sdpa
    pass, FLOPs count each product with its own dimension, and the mix-up is caught."""
    problem = Problem(heads=4, seq_len=2048, head_dim=192, v_head_dim=128, causal=True, dtype=dtype)
    registry = load_registry()
    for name in ("naive", "sdpa"):
        assert check(registry.get(name), problem, max_rows=64).ok, name
    assert not check(ValuesScaledAsKeys(), problem, max_rows=64).ok
    from attnbench.case.work import softmax_work

    same = softmax_work(problem.with_(head_dim=160, v_head_dim=0)).flops
    assert softmax_work(problem).flops == same  # 2·pairs·(192 + 128) = 4·pairs·160
    assert "does not support v_head_dim" in (registry.get("chunked").supports(problem) or "")


@pytest.mark.parametrize(
    "name,fields",
    [
        ("chunked", dict(causal=True)),
        ("chunked", dict(causal=True, documents="longtail:4")),
        ("sliding_window", dict(causal=True, window=128)),
        ("block_sparse", dict(causal=True, layout="bigbird")),
    ],
)
def test_our_tiled_kernels_join_sinks_through_the_log_sum_exp(name: str, fields: dict) -> None:
    """gpt-oss's sinks in chunked, sliding_window and block_sparse, forward and backward (the
    backward recomputes the tiles from the log-sum-exp with the sink joined)."""
    impl = load_registry().get(name)
    for mode in ("forward", "forward_backward"):
        problem = Problem(heads=4, kv_heads=2, seq_len=1100, sinks="learned", mode=mode, dtype="bfloat16", **fields)
        result = check(impl, problem, max_rows=64)
        assert result.ok, (mode, result.figures())


@pytest.mark.parametrize(
    "fields", [dict(causal=True, window=8), dict(causal=False, window=8), dict(causal=True, window=8, kv_len=80)]
)
def test_streaming_sinks_keep_the_first_tokens_beside_the_window(fields: dict) -> None:
    """``sinks = "first:4"``: the window's pairs and the first 4 keys (within the causal limit);
    the pairs counted for FLOPs are the mask's."""
    problem = Problem(seq_len=64, sinks="first:4", **fields)
    nq, nk = problem.seq_len, problem.kv_len
    p = torch.arange(nq)[:, None] + nk - nq
    j = torch.arange(nk)[None, :]
    window = (p - j).abs() < 8
    reach = j <= p if problem.causal else torch.ones_like(window)
    want = (window & reach) | ((j < 4) & reach)
    assert torch.equal(problem.pattern.mask(nq, nk), want)
    assert problem.pattern.pairs(nq, nk) == int(want.sum())
    assert "first_tokens" in (load_registry().get("chunked").supports(problem) or "")


def test_streaming_sinks_recover_the_first_token_a_window_loses(tmp_path: Path) -> None:
    """The fidelity probe: a 256-token window keeps 0.28 of what softmax puts on the first token
    at 1K tokens; the same window with the first 4 tokens kept recovers all of it."""
    from cli_helpers import attnbench

    from attnbench.measure.records import read_records

    suite = tmp_path / "sinks.toml"
    suite.write_text(
        '[suite]\nname = "sinks"\nimplementations = ["sdpa"]\nbaseline = ""\n[budget]\nmin_time_s = 0.01\n'
        'max_time_s = 0.05\nmin_repeats = 3\n[grid]\nprobe = ["first_token"]\nseq_len = [1024]\nheads = [4]\n'
        'dtype = ["float32"]\ncausal = [true]\nwindow = [256]\nsinks = ["none", "first:4"]\n'
    )
    proc = attnbench("run", str(suite), "--out", str(tmp_path / "out"), "--no-report")
    assert proc.returncode == 0, proc.stderr
    recovered = {r["sinks"]: r["recovered"] for r in read_records(tmp_path / "out" / "results.jsonl")}
    assert recovered["none"] < 0.5 and recovered["first:4"] > 0.95, recovered
