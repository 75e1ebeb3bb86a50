"""Inductor's vector-ISA probe answered from this host's earlier answer
(attnbench.implementations._inductor_isa): trusted only where the CPU's flags give the same pick."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch._inductor.cpu_vec_isa")
from torch._inductor import config
from torch._inductor.cpu_vec_isa import pick_vec_isa, valid_vec_isa_list

from attnbench.implementations import _inductor_isa


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A cache file of its own, Inductor's setting as a new process has it, nothing remembered."""
    path = tmp_path / "isa.json"
    monkeypatch.setenv(_inductor_isa.ENV, str(path))
    _inductor_isa.use_cached_probe.cache_clear()
    valid_vec_isa_list.cache_clear()
    with config.patch({"cpp.vec_isa_ok": None}):
        yield path
    _inductor_isa.use_cached_probe.cache_clear()
    valid_vec_isa_list.cache_clear()


def test_the_first_process_probes_and_the_next_trusts_the_same_pick(fresh: Path) -> None:
    assert _inductor_isa.use_cached_probe() == "probed"
    probed = str(pick_vec_isa())
    assert list(json.loads(fresh.read_text()).values()) == [probed]
    assert config.cpp.vec_isa_ok is None
    _inductor_isa.use_cached_probe.cache_clear()  # the next process
    valid_vec_isa_list.cache_clear()
    assert _inductor_isa.use_cached_probe() == "cached"
    assert config.cpp.vec_isa_ok is True and str(pick_vec_isa()) == probed


def test_a_stored_pick_the_flags_alone_would_not_make_is_probed_again(fresh: Path) -> None:
    """Plant it: the file says another instruction set than the one the flags pick."""
    key = _inductor_isa._key()
    fresh.write_text(json.dumps({key: "some other isa"}))
    assert _inductor_isa.use_cached_probe() == "probed"
    assert config.cpp.vec_isa_ok is None  # Inductor probed for itself
    assert json.loads(fresh.read_text())[key] == str(pick_vec_isa())


def test_off_leaves_inductor_alone(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_inductor_isa.ENV, "off")
    assert _inductor_isa.use_cached_probe() == "off"
    assert config.cpp.vec_isa_ok is None and not fresh.exists()
