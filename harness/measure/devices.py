"""Devices at run time: how a case's device is timed, measured and controlled.

Names are parsed in :mod:`attnbench.case.devices`. One class per kind — :class:`CPU`,
:class:`CUDA` (``cuda:N`` is GPU ``N``) and :class:`MPS` — each with its synchronize, its clock,
its peak-memory probe, its thread control and the torch device it names. Everything else asks
:func:`device` for the object instead of testing strings.

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch

from attnbench.case.devices import KINDS, canonical, parse_device
from attnbench.measure.memory import MemoryUnavailable, cpu_peak_bytes

Call = Callable[[], object]
__all__ = ["CPU", "CUDA", "KINDS", "MPS", "Clock", "Device", "canonical", "device", "present_devices", "usable_cores"]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Device:
    """A device kind and, for GPUs, its index. ``name`` is what records and suites hold."""

    kind: str = "cpu"
    index: int | None = None

    @property
    def name(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    @property
    def torch(self) -> torch.device:
        return torch.device(self.name)

    @property
    def is_gpu(self) -> bool:
        return self.kind != "cpu"

    def present(self) -> bool:
        return self.kind == "cpu"

    def synchronize(self) -> None:
        """Wait until queued work on this device is done (nothing to wait for on the CPU)."""

    def activate(self) -> None:
        """Make this the device that work without an explicit device goes to (a GPU's index)."""

    def describe(self) -> str:
        """What this device is, for records: the CPU's model, a GPU's name."""
        from attnbench.measure.machine import cpu_model

        return cpu_model()

    def set_threads(self, threads: int) -> int:
        """Use ``threads`` CPU threads (0: every usable core) for the work queued from this
        process; returns the number really used."""
        torch.set_num_threads(threads or usable_cores())
        return torch.get_num_threads()

    def clock(self) -> Clock:
        return Clock(self)

    def peak_bytes(self, fn: Call) -> int:
        """Peak extra memory of one call of ``fn`` (see :mod:`attnbench.measure.memory`)."""
        return cpu_peak_bytes(fn)

    def __str__(self) -> str:
        return self.name


class CPU(Device):
    pass


class CUDA(Device):
    """GPU ``index`` through CUDA: events for time, an L2 flush before each call, the caching
    allocator's peak for memory."""

    def present(self) -> bool:
        return torch.cuda.is_available() and (self.index or 0) < torch.cuda.device_count()

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.torch)

    def activate(self) -> None:
        torch.cuda.set_device(self.index or 0)  # events, streams and caches follow the current device

    def describe(self) -> str:
        return str(torch.cuda.get_device_name(self.index or 0))

    def set_threads(self, threads: int) -> int:
        return 0  # GPU cases: the host's threads are not a parameter

    def peak_bytes(self, fn: Call) -> int:
        import gc

        gc.collect()
        self.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.torch)
        before = torch.cuda.memory_allocated(self.torch)
        result = fn()
        self.synchronize()
        peak = torch.cuda.max_memory_allocated(self.torch)
        del result
        return max(0, peak - before)


class MPS(Device):
    """Apple's Metal device: synchronized around every timed call; no peak-memory counter."""

    def present(self) -> bool:
        mps = getattr(torch.backends, "mps", None)
        return bool(mps is not None and mps.is_available())

    def synchronize(self) -> None:
        torch.mps.synchronize()

    def describe(self) -> str:
        return "Apple GPU (MPS)"

    def set_threads(self, threads: int) -> int:
        return 0

    def peak_bytes(self, fn: Call) -> int:
        raise MemoryUnavailable("MPS offers no peak-memory counter")


class Clock:
    """Times calls on a device, in milliseconds per call."""

    def __init__(self, dev: Device) -> None:
        self.device = dev
        self._flush: torch.Tensor | None = None
        if isinstance(dev, CUDA):
            # 256 MiB zeroed before each call evicts the L2 cache (as triton's do_bench does).
            self._flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=dev.torch)

    def time(self, fn: Call, inner: int = 1) -> float:
        if self._flush is not None:
            return self._time_cuda(fn, inner)
        self.device.synchronize()
        start = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        self.device.synchronize()
        return (time.perf_counter_ns() - start) / 1e6 / inner

    def _time_cuda(self, fn: Call, inner: int) -> float:
        assert self._flush is not None
        total = 0.0
        for _ in range(inner):
            self._flush.zero_()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.device.synchronize()
            begin.record()
            fn()
            end.record()
            self.device.synchronize()
            total += begin.elapsed_time(end)
        return total / inner


def device(name: str | Device) -> Device:
    """The device called ``name``: ``cpu``, ``cuda`` (GPU 0), ``cuda:N``, ``mps``."""
    if isinstance(name, Device):
        return name
    kind, index = parse_device(name)
    if kind == "cpu":
        return CPU("cpu")
    if kind == "mps":
        return MPS("mps")
    return CUDA("cuda", index)


@lru_cache(maxsize=1)
def present_devices() -> tuple[str, ...]:
    """Every device present: the CPU, each CUDA GPU, MPS."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if MPS("mps").present():
        names.append("mps")
    return tuple(names)
