"""Peak memory of one call, measured in a pass of its own (never inside the timing loop).

CPU (Linux): reset the process's resident high-water mark by writing ``5`` to
``/proc/self/clear_refs``, run the call once, read ``VmHWM`` from ``/proc/self/status`` and
subtract the resident set measured just before, after the inputs exist. ``ru_maxrss`` would
start from the parent's mark in a child process and tracemalloc cannot see tensor storage, so
neither is used. Workers set ``MALLOC_MMAP_THRESHOLD_`` so that glibc returns large buffers to
the system when they are freed, which keeps an earlier peak from hiding a later one.

Other devices measure their own way (:mod:`attnbench.devices`); CUDA reads
``max_memory_allocated`` after resetting the peak, minus what was allocated before.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


class MemoryUnavailable(Exception):
    """This platform offers no way to read the peak."""


def _status_kib(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise MemoryUnavailable(f"{STATUS} has no {field}")


def rss_bytes() -> int:
    """The resident set of this process now."""
    return _status_kib("VmRSS") * 1024


def vm_size_bytes() -> int:
    """The virtual size of this process now (what RLIMIT_AS counts)."""
    return _status_kib("VmSize") * 1024


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Growth of the resident set over one call of ``fn``."""
    if not CLEAR_REFS.exists():
        raise MemoryUnavailable("no /proc/self/clear_refs: the peak resident set cannot be reset here")
    gc.collect()
    before = rss_bytes()
    try:
        CLEAR_REFS.write_text("5")
    except OSError as exc:
        raise MemoryUnavailable(f"cannot reset the peak resident set: {exc}") from None
    result = fn()
    peak = _status_kib("VmHWM") * 1024
    del result
    return max(0, peak - before)
