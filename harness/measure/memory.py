"""Peak memory of one call, measured outside the timing loop (over the judged call, :mod:`attnbench.measure.case_run`).

CPU (Linux): reset the process's resident high-water mark by writing ``5`` to
``/proc/self/clear_refs``, run the call once, read ``VmHWM`` from ``/proc/self/status`` and
subtract the resident set measured just before, after the inputs exist. ``ru_maxrss`` would
start from the parent's mark in a child process and tracemalloc cannot see tensor storage, so
neither is used. During the pass glibc maps every block above 64 KiB afresh and returns it when
freed (:func:`strict_allocator`), so that each allocation raises the resident set and an
earlier peak cannot hide a later one. glibc serves a request from a free block of its heap
before it maps one, whatever the threshold, and a heap block freed during the call stays
resident; so the heap's free room (left by the timed calls, which reuse heap blocks) is taken
and held, untouched, for the pass. Without that hold a call's figure depended on what ran
before it: ``naive`` at 512 tokens, 8 heads, causal (two 8 MiB score matrices alive at once)
read 16.9-17.1 MiB in one order of calls and 23.6-33.2 MiB in another, in the same process;
with it, 16.7-16.9 MiB after every order tried. A pass during which the kernel reclaimed the
process's file-backed pages is measured again (:func:`cpu_peak_bytes`).

That strict allocator is for the memory pass only. Everything timed runs under glibc's steady
state for a program that allocates and frees the same buffers call after call — blocks up to
32 MiB reused from the heap — set once when a worker starts (:func:`timing_allocator`): a
worker that mapped every block afresh would charge an implementation the page faults of its
temporaries on every call, which no user's loop pays (it made ``linear`` 2-3× slower, and
sliding-window and block-sparse kernels 15-30%, while SDPA, which allocates one output, was
untouched).

Other devices measure their own way (:mod:`attnbench.measure.devices`); CUDA reads
``max_memory_allocated`` after resetting the peak, minus what was allocated before.

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
from collections.abc import Callable, Iterator
from pathlib import Path

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: (mmap threshold, trim threshold) while timing: the steady state glibc's dynamic threshold
#: reaches after large blocks are freed (its maximum on 64-bit, and twice it), fixed from the
#: first call so that the first job of a worker runs like the later ones.
TIMING_ALLOCATOR = (32 * 2**20, 64 * 2**20)
#: ... and during a memory pass: every block above 64 KiB mapped afresh and returned on free.
STRICT_ALLOCATOR = (64 * 2**10, 128 * 2**10)


#: Block sizes the heap's free room is held in during a memory pass, largest first: the first
#: keeps the pages the hold touches (one header per block) few, the last is the strict mmap
#: threshold, below which requests come from the heap in any case.
HOLD_BLOCKS = (2**20, STRICT_ALLOCATOR[0])
#: At most this many blocks are held (16 GiB of free heap in 1 MiB blocks).
HOLD_LIMIT = 1 << 14
#: The flag glibc sets in a chunk's size word when the chunk was mapped on its own.
IS_MMAPPED = 0x2


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        libc.malloc.argtypes, libc.malloc.restype = (ctypes.c_size_t,), ctypes.c_void_p
        libc.free.argtypes, libc.free.restype = (ctypes.c_void_p,), None
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()  # glibc's own symbol: the chunk layout read below is glibc's
    except (OSError, AttributeError):
        return None  # not glibc: its defaults stay, and there is nothing to trim
    return libc


def _hold_free_heap(libc: ctypes.CDLL) -> list[int]:
    """Take the heap's free room in blocks of :data:`HOLD_BLOCKS` (never touching their pages)
    until glibc has to map a block afresh, which shows the heap has no room of that size left;
    returns the blocks held, for :func:`_release`."""
    held: list[int] = []
    word = ctypes.sizeof(ctypes.c_size_t)
    for size in HOLD_BLOCKS:
        while len(held) < HOLD_LIMIT:
            block = libc.malloc(size)
            if not block:
                break
            if ctypes.c_size_t.from_address(block - word).value & IS_MMAPPED:
                libc.free(block)  # mapped: no free room of this size is left in the heap
                break
            held.append(block)
    return held


def _release(libc: ctypes.CDLL, held: list[int]) -> None:
    for block in reversed(held):
        libc.free(block)


def set_allocator(mode: tuple[int, int]) -> bool:
    """Set glibc's (mmap threshold, trim threshold); False where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mode[0])) and bool(libc.mallopt(M_TRIM_THRESHOLD, mode[1]))


def timing_allocator() -> bool:
    """The allocator every timed call of a worker runs under (see the module)."""
    return set_allocator(TIMING_ALLOCATOR)


@contextlib.contextmanager
def strict_allocator() -> Iterator[None]:
    """Every large block mapped afresh, free memory returned first and the heap's free room held
    (see the module), for a memory pass; the timing allocator after it."""
    set_allocator(STRICT_ALLOCATOR)
    libc = _glibc()
    held: list[int] = []
    if libc is not None:
        libc.malloc_trim(0)
        held = _hold_free_heap(libc)
    try:
        yield
    finally:
        if libc is not None:
            _release(libc, held)
        timing_allocator()


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
    with strict_allocator():
        return _peak(fn)


def _peak(fn: Callable[[], object]) -> int:
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
