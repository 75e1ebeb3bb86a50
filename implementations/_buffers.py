"""Fresh output buffers of tens of MB, allocated so that their first write costs few page faults.

A buffer above glibc's mmap threshold (32 MiB at most) is mapped afresh on every call and costs
one page fault per 4 KB page when it is first written. Where the kernel's transparent-huge-page
mode is ``madvise`` (Linux), advising the buffer to use 2 MB pages before it is touched replaces
those faults by one per 2 MB. The advice is advice: where the system refuses it, nothing changes.

Measured on two-core AMD EPYC VMs (THP ``madvise``), allocating a 32 MiB buffer and copying into
it: 3.7 ms at the median with the advice against 9.9 ms without (20 interleaved runs; the worst
with the advice 33.8 ms), and the window's forward pass at N = 16K, which writes its output into
such a buffer, 92.0 ms against 98.6 ms (medians of 25 interleaved calls). On an earlier VM of the
same kind the first touch alone took 44-50 ms with the advice against 12-13 ms without, while
inside the window's forward pass the difference vanished: worth measuring again on a new machine.

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

import torch

Tensor = torch.Tensor

#: The huge page size, and the ``madvise`` advice asking for them (Linux).
HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_madvise: Any = None
if sys.platform.startswith("linux"):
    try:
        _madvise = ctypes.CDLL(None, use_errno=True).madvise
        _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):  # pragma: no cover - no libc symbol
        _madvise = None


def fresh(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """``torch.empty``; a large CPU buffer is advised to use huge pages before it is touched."""
    out = torch.empty(shape, dtype=dtype, device=device)
    nbytes = out.numel() * out.element_size()
    if _madvise is not None and out.device.type == "cpu" and nbytes >= 8 * HUGE_PAGE:
        start = -(-out.data_ptr() // HUGE_PAGE) * HUGE_PAGE
        end = (out.data_ptr() + nbytes) // HUGE_PAGE * HUGE_PAGE
        if end > start:
            _madvise(start, end - start, _MADV_HUGEPAGE)  # advice only: failure changes nothing
    return out
