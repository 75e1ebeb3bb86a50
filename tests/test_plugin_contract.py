"""The plugin contract, as plugin authors meet it: an exact claim is judged against the case
itself; the function route's keywords (reference, requires, setup, tolerance, flops, problem);
a seed per case; registry hygiene; ``attnbench check``; and a real third-party package."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import attnbench

from attnbench import Problem
from attnbench.measure.verify import check
from attnbench.plugins.contract import FunctionImplementation
from attnbench.plugins.registry import Registry, load_registry

Tensor = torch.Tensor
PLUGINS = Path(__file__).parent / "plugins"
SMALL = Problem(batch=1, heads=2, seq_len=96, head_dim=16, causal=True)


def registry_with(*files: str) -> Registry:
    reg = Registry()
    reg.load_builtins()
    for name in files:
        reg.load_file(PLUGINS / name)
    return reg


# -- exact means exact against the case -------------------------------------------------------------


@pytest.mark.parametrize("name", ["zeros_own_reference", "zeros_class"])
def test_an_exact_claim_cannot_be_bought_with_a_reference_of_ones_own(name: str) -> None:
    impl = registry_with("cheats.py").get(name)
    assert impl.exact and impl.own_reference
    result = check(impl, SMALL.with_(causal=False))
    assert not result.ok
    assert result.own_reference_differs is True


def test_a_shifted_window_with_its_own_matching_reference_is_found_out() -> None:
    """NATTEN's non-causal shifted window passed this way before: a different function in some
    rows, with a reference() that agreed with it."""
    impl = registry_with("cheats.py").get("shifted_window")
    result = check(impl, Problem(heads=2, seq_len=128, head_dim=16, causal=True, window=16))
    assert not result.ok
    assert result.own_reference_differs is True and "own account" in result.note


def test_an_exact_plugin_whose_own_reference_is_the_case_passes_and_says_so() -> None:
    reg = Registry()

    def reference(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)

    @reg.register("honest", reference=reference)
    def honest(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)

    result = check(reg.get("honest"), SMALL)
    assert result.ok and result.own_reference_differs is False


# -- the function route ------------------------------------------------------------------------------


def test_reference_judges_an_approximation_and_reports_its_distances() -> None:
    impl = registry_with("favor.py").get("favor")
    problem = Problem(batch=1, heads=2, seq_len=200, head_dim=32, seed=5)
    result = check(impl, problem)
    assert result.ok, result.failures()
    assert result.full_rel_err is not None and result.uniform_rel_err is not None
    assert result.full_rel_err > 0.01  # it is an approximation, and says how far it is


def test_an_approximation_that_strays_from_its_own_reference_is_inaccurate() -> None:
    reg = Registry()
    reg.load_file(PLUGINS / "favor.py")
    favor = reg.get("favor")
    assert isinstance(favor, FunctionImplementation) and favor.setup is not None
    module = sys.modules[favor.setup.__module__]

    def other_features(problem: Problem) -> object:  # a different draw than the reference's
        return module.setup(problem.with_(seed=problem.seed + 1))

    stray = FunctionImplementation(
        "stray", favor.fn, exact=False, features=(), dtypes=("float32",), setup=other_features,
        reference=favor.reference_fn, tolerance=1e-4,
    )  # fmt: skip
    assert not check(stray, Problem(batch=1, heads=2, seq_len=200, head_dim=32)).ok


def test_setup_runs_once_per_case_outside_the_timed_call() -> None:
    calls = {"setup": 0, "timed": 0}

    def setup(problem: Problem) -> object:
        calls["setup"] += 1

        def run(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
            calls["timed"] += 1
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)

        return run

    def untimed(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        raise AssertionError("with setup=, the function setup returns is the one called")

    impl = FunctionImplementation("with_setup", untimed, setup=setup)
    fn = impl.prepare(SMALL)
    q, k, v = SMALL.make_inputs()
    for _ in range(10):
        fn(q, k, v)
    assert calls == {"setup": 1, "timed": 10}


def test_requires_declares_what_a_function_cannot_run_without() -> None:
    impl = registry_with("local_attention_plugin.py").get("local_attention")
    assert impl.supports(Problem(seq_len=128, causal=True)) == "runs only with window; this case has none"
    assert impl.supports(Problem(seq_len=128, causal=True, window=32)) is None
    assert "full" not in impl.computes and "window" in impl.computes


def test_tolerance_is_the_approximations_own() -> None:
    def off(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, scale=scale) * 1.002  # 0.2% from its definition

    def definition(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        return torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) @ v

    strict = FunctionImplementation("strict", off, exact=False, features=(), reference=definition)
    loose = FunctionImplementation("loose", off, exact=False, features=(), reference=definition, tolerance=5e-3)
    problem = SMALL.with_(causal=False)
    assert not check(strict, problem).ok  # float32's default tolerance is 1e-4
    assert check(loose, problem).ok


def test_flops_declared_by_a_function_are_its_own() -> None:
    impl = registry_with("favor.py").get("favor")
    problem = Problem(batch=1, heads=2, seq_len=200, head_dim=32)
    features = sys.modules[impl.fn.__module__].FEATURES  # the plugin's own feature count
    assert impl.work(problem).flops == 2 * 4 * 400 * features * 32
    assert load_registry().get("linear").work(problem).flops != load_registry().get("sdpa").work(problem).flops


def test_an_approximation_that_declares_nothing_gets_no_flops() -> None:
    impl = FunctionImplementation("quiet", lambda q, k, v, **_: q, exact=False, features=())
    assert impl.work(SMALL).flops is None and impl.work(SMALL).bytes is not None


# -- a seed per case ---------------------------------------------------------------------------------


def test_the_problem_carries_a_seed_and_a_generator() -> None:
    a, b = Problem(seed=3), Problem(seed=3)
    assert torch.equal(torch.randn(4, generator=a.generator()), torch.randn(4, generator=b.generator()))
    assert not torch.equal(
        torch.randn(4, generator=a.generator()), torch.randn(4, generator=Problem(seed=4).generator())
    )
    state = torch.random.get_rng_state()
    Problem(seed=9).generator()
    assert torch.equal(state, torch.random.get_rng_state())  # global state untouched
    q1, _, _ = Problem(seed=1).make_inputs()
    q2, _, _ = Problem(seed=2).make_inputs()
    assert not torch.equal(q1, q2)


def test_random_features_agree_between_setup_and_reference_for_any_seed() -> None:
    impl = registry_with("favor.py").get("favor")
    for seed in (0, 11):
        assert check(impl, Problem(batch=1, heads=1, seq_len=64, head_dim=16, seed=seed)).ok


# -- registry hygiene --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--plugin", "missing.py"], "does not exist"),
        (["list", "--plugin", str(PLUGINS / "takes_sdpa.py")], "already registered"),
        (["check", "sdpa", "--plugin", "missing.py"], "does not exist"),
        (["run", "smoke", "--plugin", str(PLUGINS / "takes_sdpa.py"), "--no-report"], "already registered"),
        (["list", "--plugin", str(PLUGINS / "broken_plugin.py")], "failed to import: RuntimeError"),
        (["check", "sdpa", "--plugin", str(PLUGINS / "broken_plugin.py")], "failed to import: RuntimeError"),
        (["run", "smoke", "--only", "sdpa", "--plugin", str(PLUGINS / "broken_plugin.py")], "broken_plugin.py"),
    ],
)
def test_bad_plugins_exit_2_with_one_sentence(args: list[str], message: str) -> None:
    proc = attnbench(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


FAKE_MODULE = '''
import torch.nn.functional as F
from attnbench import Implementation, register
from fakepkg2 import helper  # registers helper_attn, labelled with its own module


@register("real_attn", description="registered by decorator")
def decorated(q, k, v, *, causal, scale):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


@register("base_attn")
class Base(Implementation):
    devices = ("cpu",)

    def attention(self, q, k, v, problem):
        return F.scaled_dot_product_attention(q, k, v, is_causal=problem.causal, scale=problem.scale)


class Sub(Base):
    """Undecorated: registered only by its entry point, under the entry point's name."""
'''
FAKE_HELPER = """
import torch.nn.functional as F
from attnbench import register


@register("helper_attn")
def helper_attn(q, k, v, *, causal, scale):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
"""


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    info = tmp_path / "fakepkg2-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg2\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[attnbench.implementations]\n"
        "alias_attn = fakepkg2.mod:decorated\n"
        "fake_module = fakepkg2.mod\n"
        "sub_attn = fakepkg2.mod:Sub\n"
    )
    package = tmp_path / "fakepkg2"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text(FAKE_MODULE)
    (package / "helper.py").write_text(FAKE_HELPER)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m == "fakepkg2" or m.startswith("fakepkg2.")]:
        del sys.modules[name]


def test_an_entry_point_naming_a_decorated_function_is_an_alias(fake_package: Path) -> None:
    reg = Registry().load_all()
    assert reg.get("alias_attn") is reg.get("real_attn")
    assert "alias_attn" not in reg.names() and reg.aliases()["alias_attn"] == "real_attn"
    assert check(reg.get("alias_attn"), SMALL).ok


def test_each_implementation_is_labelled_with_the_module_that_registered_it(fake_package: Path) -> None:
    reg = Registry().load_all()
    assert reg.get("helper_attn").source == "module fakepkg2.helper"
    assert reg.get("real_attn").source.startswith("entry point ") and "fakepkg2.mod" in reg.get("real_attn").source
    assert reg.get("chunked").source == "built-in"


def test_a_subclass_does_not_inherit_its_parents_registered_name(fake_package: Path) -> None:
    reg = Registry().load_all()
    assert reg.get("base_attn").name == "base_attn"
    sub = reg.get("sub_attn")
    assert sub.name == "sub_attn" and type(sub).__name__ == "Sub"


# -- attnbench check ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_check_gives_a_verdict_for_an_honest_and_a_dishonest_plugin() -> None:
    good = attnbench("check", "chunked", "--case", "seq_len=200,causal=true", "--case", "seq_len=64,dtype=bfloat16")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "2 ok" in good.stdout
    bad = attnbench("check", "zeros_own_reference", "--plugin", str(PLUGINS / "cheats.py"), "--case", "seq_len=64")
    assert bad.returncode == 1 and "inaccurate" in bad.stdout
    wrong = attnbench("check", "chunked", "--case", "seq_lenn=64")
    assert wrong.returncode == 2 and "KEY=VALUE" in wrong.stderr


# -- a real third-party package ----------------------------------------------------------------------

HAS_LOCAL_ATTENTION = importlib.util.find_spec("local_attention") is not None


@pytest.mark.skipif(not HAS_LOCAL_ATTENTION, reason="local-attention is not installed (pip install local-attention)")
@pytest.mark.parametrize(("seq_len", "window"), [(256, 64), (300, 64), (1000, 128)])
def test_local_attention_is_exact_for_its_exact_window_and_caught_off_by_one(seq_len: int, window: int) -> None:
    reg = registry_with("local_attention_plugin.py")
    impl = reg.get("local_attention")
    assert isinstance(impl, FunctionImplementation) and impl.setup is not None
    problem = Problem(batch=1, heads=2, seq_len=seq_len, head_dim=32, causal=True, window=window)
    result = check(impl, problem)
    assert result.ok, result.failures()
    module = sys.modules[impl.setup.__module__]
    module.OFF_BY_ONE = 1  # window_size = W: one key too many
    try:
        assert not check(impl, problem).ok
    finally:
        module.OFF_BY_ONE = 0


@pytest.mark.skipif(not HAS_LOCAL_ATTENTION, reason="local-attention is not installed (pip install local-attention)")
def test_local_attention_joins_a_shipped_suite_through_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    plugin = PLUGINS / "local_attention_plugin.py"
    proc = attnbench(
        "run", "smoke", "--plugin", str(plugin), "--only", "local_attention,sdpa", "--out", str(out), "--no-report"
    )
    assert proc.returncode == 0, proc.stderr
    from attnbench.measure.records import read_records

    mine = [r for r in read_records(out / "results.jsonl") if r["impl"] == "local_attention"]
    assert mine and all(r["status"] == "ok" for r in mine), [(r["status"], r["reason"]) for r in mine]
