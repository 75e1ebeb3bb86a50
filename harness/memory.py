"""Peak memory of one call, measured in a pass of its own (never inside the timing loop).

CPU (Linux): reset the process's resident high-water mark by writing ``5`` to
``/proc/self/clear_refs``, run the call once, read ``VmHWM`` from ``/proc/self/status`` and
subtract the resident set measured just before, after the inputs exist. ``ru_maxrss`` would
start from the parent's mark in a child process and tracemalloc cannot see tensor storage, so
neither is used. Workers set ``MALLOC_MMAP_THRESHOLD_`` so that glibc returns large buffers to
the system when they are freed, which keeps an earlier peak from hiding a later one. A pass
during which the kernel reclaimed the process's file-backed pages is measured again
(:func:`cpu_peak_bytes`).

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


def _resident() -> tuple[int, int, int]:
    """``(VmRSS, RssAnon, RssFile + RssShmem)`` in bytes, read from one snapshot of the status."""
    fields: dict[str, int] = {}
    for line in STATUS.read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[name] = int(rest.split()[0]) * 1024
    if "VmRSS" not in fields:
        raise MemoryUnavailable(f"{STATUS} has no VmRSS")
    anon = fields.get("RssAnon", fields["VmRSS"])
    return fields["VmRSS"], anon, fields.get("RssFile", 0) + fields.get("RssShmem", 0)


#: A pass during which more than this much of the process's file-backed resident set (its
#: shared libraries, mostly) was reclaimed is measured again: the high-water mark counts every
#: resident page, so pages the kernel dropped during the call would hide the call's own growth.
RECLAIM_SLACK = 2 * 2**20
#: Passes tried before the figure is given as the most any of them saw.
PASSES = 3


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Growth of the resident set over one call of ``fn``.

    The high-water mark counts file-backed pages too, so a pass during which the kernel
    reclaimed some of them (memory pressure from other processes) could report less than the
    call allocated, even nothing. Such a pass is repeated, up to :data:`PASSES` times; and the
    figure is never below the growth of the anonymous resident set over the call with its result
    still held, which reclaim of file pages cannot hide.
    """
    if not CLEAR_REFS.exists():
        raise MemoryUnavailable("no /proc/self/clear_refs: the peak resident set cannot be reset here")
    best = 0
    for _ in range(PASSES):
        gc.collect()
        before, anon_before, file_before = _resident()
        try:
            CLEAR_REFS.write_text("5")
        except OSError as exc:
            raise MemoryUnavailable(f"cannot reset the peak resident set: {exc}") from None
        result = fn()
        peak = _status_kib("VmHWM") * 1024
        _, anon_after, file_after = _resident()
        del result
        best = max(best, peak - before, anon_after - anon_before)
        if file_before - file_after <= RECLAIM_SLACK:
            break
    return max(0, best)
