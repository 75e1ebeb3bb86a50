"""Inductor's CPU vector-ISA probe, answered from this host's earlier answer.

Before the first CPU kernel a process compiles, Inductor checks every vector instruction set the
CPU's flags name (AVX-512, AVX2, …) by building a small library with each one's flags and loading
it in a child Python: 0.88 s on a two-core AVX-512 VM, paid again by every worker process that
compiles (each ``flex`` or ``hf:flex_attention`` worker; the whole ``smoke`` run spends about 3 s
setting up). Its answer does not change while the CPU, the compiler and PyTorch stay the same.
So the first process that compiles lets Inductor probe and stores the instruction set it picked,
keyed by the CPU's flags, the C++ compiler and PyTorch's version; a later process tells Inductor
to trust the CPU's flags (``config.cpp.vec_isa_ok``; 0.18 s) only where that gives the same pick,
and otherwise lets it probe again. The file is ``$XDG_CACHE_HOME/attnbench/inductor_isa.json``
(``~/.cache`` without the variable) or the path in ``ATTNBENCH_ISA_CACHE``; ``off`` turns it off.

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from pathlib import Path

import torch

ENV = "ATTNBENCH_ISA_CACHE"


def cache_path() -> Path | None:
    """Where the answers live, or None when the cache is off."""
    value = os.environ.get(ENV)
    if value is not None:
        value = value.strip()
        return Path(value) if value and value.lower() not in ("off", "0", "none") else None
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "attnbench" / "inductor_isa.json"


def _key() -> str:
    """The CPU's flags, the compiler Inductor uses (its path and modification time) and PyTorch."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    flags = ""
    with contextlib.suppress(OSError):
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    compiler = get_cpp_compiler()
    stamp = ""
    with contextlib.suppress(OSError):
        stamp = str(Path(compiler).stat().st_mtime_ns)
    text = "|".join((flags, compiler, stamp, torch.__version__))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _read(path: Path) -> dict[str, str]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


@functools.cache
def use_cached_probe() -> str:
    """Answer Inductor's ISA probe from the cache where it can, once per process; returns how
    (``cached``, ``probed``, ``off``, or why not) for the tests."""
    path = cache_path()
    if path is None:
        return "off"
    from torch._inductor import config
    from torch._inductor.cpu_vec_isa import pick_vec_isa, valid_vec_isa_list

    if config.cpp.vec_isa_ok is not None:
        return "set by the user"
    try:
        key = _key()
    except Exception as exc:  # no compiler: Inductor will say so when it compiles
        return f"no key: {type(exc).__name__}"
    known = _read(path).get(key)
    if known:
        config.cpp.vec_isa_ok = True
        valid_vec_isa_list.cache_clear()
        if str(pick_vec_isa()) == known:
            return "cached"
        config.cpp.vec_isa_ok = None  # the flags alone pick another: let Inductor probe
        valid_vec_isa_list.cache_clear()
    picked = str(pick_vec_isa())  # Inductor's own probe
    entries = _read(path)
    entries[key] = picked
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        os.replace(tmp, path)
    return "probed"
