"""The registry: names, errors a user can cause, and the three ways implementations arrive —
built-in modules, ``--plugin`` files and installed packages' entry points."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from attnbench import Problem
from attnbench.measure.verify import check
from attnbench.plugins.contract import FunctionImplementation, Implementation
from attnbench.plugins.registry import (
    REGISTRY,
    DuplicateImplementationError,
    Registry,
    RegistryError,
    UnknownImplementationError,
    load_registry,
)

PLUGINS = Path(__file__).parent / "plugins"
SMALL = Problem(batch=2, heads=4, kv_heads=2, seq_len=24, kv_len=40, head_dim=16, causal=True)


def _softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float
) -> torch.Tensor:
    """Plain softmax attention (no causal mask; enough for full problems)."""
    return torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) @ v  # [B, H, Nq, D]


def _runs(impl: Implementation, problem: Problem) -> None:
    q, k, v = problem.make_inputs()
    with torch.no_grad():
        out = impl.prepare(problem)(q, k, v)  # [B, H, Nq, D]
    assert out.shape == q.shape and torch.isfinite(out.float()).all(), impl.name


# -- names and errors ---------------------------------------------------------------------------


def test_duplicate_name_is_a_clear_error() -> None:
    reg = Registry()
    reg.register("mine")(_softmax_attention)
    with pytest.raises(DuplicateImplementationError, match=r"'mine' is already registered.*choose another name"):
        reg.register("mine")(_softmax_attention)


def test_builtin_name_cannot_be_taken_by_a_plugin_function() -> None:
    reg = Registry()
    reg.load_builtins()
    with pytest.raises(DuplicateImplementationError, match="'sdpa'"):
        reg.register("sdpa")(_softmax_attention)


def test_unknown_name_suggests_close_names() -> None:
    reg = Registry()
    reg.load_builtins()
    with pytest.raises(UnknownImplementationError, match=r"did you mean 'sdpa_flash'") as info:
        reg.get("sdpa_flsh")
    assert isinstance(info.value, KeyError)
    assert "known:" in str(info.value) and not str(info.value).startswith('"')


def test_register_needs_a_name() -> None:
    with pytest.raises(RegistryError, match="needs the implementation's name"):
        Registry().register(_softmax_attention)  # type: ignore[call-overload]


# -- the three sources --------------------------------------------------------------------------


def test_register_on_a_plain_function_end_to_end() -> None:
    reg = Registry()

    @reg.register("plain_fn", features=["gqa", "cross"])
    def plain_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float) -> torch.Tensor:
        """Softmax attention with grouped heads."""
        group = q.shape[1] // k.shape[1]
        k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))  # [B, H, Nk, D]
        return _softmax_attention(q, k, v, causal=causal, scale=scale)

    impl = reg.get("plain_fn")
    assert isinstance(impl, FunctionImplementation) and impl.fn is plain_fn
    assert impl.description == "Softmax attention with grouped heads."
    assert impl.computes == ("full",) and impl.supports(SMALL) == "does not support causal"
    problem = SMALL.with_(causal=False)
    assert impl.supports(problem) is None
    q, k, v = problem.make_inputs()
    assert torch.allclose(impl.attention(q, k, v, problem), impl.prepare(problem)(q, k, v))
    result = check(impl, problem)
    assert result.ok, result.failures()


def test_builtins_load_into_two_registries() -> None:
    """A second registry re-imports (reloads) the built-in modules; both get working instances."""
    first, second = Registry(), Registry()
    first.load_builtins()
    second.load_builtins()
    assert {"sdpa", "sdpa_math", "flex", "xformers"} <= set(first.names()) & set(second.names())
    assert first.get("sdpa") is not second.get("sdpa")
    assert first.get("sdpa").source == "built-in"
    for reg in (first, second):
        _runs(reg.get("sdpa_math"), SMALL)
    assert "sdpa" in load_registry() and load_registry() is REGISTRY


def test_plugin_file_loads_and_runs() -> None:
    reg = Registry()
    reg.load_builtins()
    reg.load_file(PLUGINS / "good_plugin.py")
    impl = reg.get("good_plugin_attn")
    assert impl.source.startswith("plugin ") and impl.source.endswith("good_plugin.py")
    assert impl.description == "plain softmax attention from a plugin file"
    assert "good_plugin_attn" not in REGISTRY  # it went to the registry that loaded it
    result = check(impl, SMALL)
    assert result.ok, result.failures()
    reg.load_file(PLUGINS / "good_plugin.py")  # a second load is a no-op, not a duplicate


def test_missing_plugin_file_is_an_error() -> None:
    with pytest.raises(RegistryError, match="does not exist"):
        Registry().load_file(PLUGINS / "no_such_plugin.py")


def test_a_plugin_file_that_fails_to_import_is_an_error_naming_the_file_and_the_exception() -> None:
    """A plugin the user named is never dropped in silence (an installed entry point that fails
    is listed as unavailable instead: see below); the registry loaded so far keeps working."""
    reg = Registry()
    reg.load_builtins()
    with pytest.raises(RegistryError, match=r"broken_plugin\.py' failed to import: RuntimeError: broken_plugin fails"):
        reg.load_file(PLUGINS / "broken_plugin.py")
    assert "broken_plugin" not in reg
    reg.load_file(PLUGINS / "good_plugin.py")
    ran = []
    for name, impl in reg.items():
        if name in ("flex", "hf:flex_attention") or not impl.available().ok or impl.supports(SMALL) is not None:
            continue  # FlexAttention: compiling costs seconds, and it has its own tests
        _runs(impl, SMALL)
        ran.append(name)
    assert {"sdpa", "sdpa_math", "good_plugin_attn"} <= set(ran)


# -- entry points of an installed package -------------------------------------------------------

FAKE_ATTN = '''
"""A third-party package's implementation, registered on import."""
import torch
from attnbench import register


@register("fake_attn", description="fake third-party attention", features=["causal", "gqa", "cross"])
def fake_attn(q, k, v, *, causal, scale):
    group = q.shape[1] // k.shape[1]
    k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril(k.shape[2] - q.shape[2])
        if causal else None, scale=scale)
'''


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed distribution ``fakepkg 0.1`` on ``sys.path`` declaring two entry points in
    ``attnbench.implementations``: one that works and one whose module raises on import."""
    info = tmp_path / "fakepkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[attnbench.implementations]\nfake_attn = fake_attn_pkg.attn\nfake_broken = fake_attn_pkg.broken\n"
    )
    package = tmp_path / "fake_attn_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "attn.py").write_text(FAKE_ATTN)
    (package / "broken.py").write_text('raise ImportError("fake_attn_pkg.broken needs a library that is missing")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m == "fake_attn_pkg" or m.startswith("fake_attn_pkg.")]:
        del sys.modules[name]


def test_entry_point_of_an_installed_package(fake_distribution: Path) -> None:
    from importlib.metadata import distribution

    assert distribution("fakepkg").version == "0.1"
    reg = Registry().load_all()
    impl = reg.get("fake_attn")
    assert impl.source == "entry point fake_attn = fake_attn_pkg.attn"
    assert {"sdpa", "fake_attn", "fake_broken"} <= set(reg.names())
    result = check(impl, SMALL)
    assert result.ok, result.failures()

    broken = reg.get("fake_broken")
    assert not broken.available().ok
    assert "fake_attn_pkg.broken needs a library that is missing" in broken.available().reason
    assert "entry point fake_broken" in broken.available().reason
    assert "fake_attn" not in REGISTRY
