"""A run's calibrations: measured on a worker (:func:`measure`, :func:`calibrate_run`), or reused
from this host's calibration cache.

Every run needs the matrix-product peak and the bandwidth of each (device, dtype, threads) it
sweeps: about two seconds each to measure on a two-core CPU, which many short runs in a row (a
test suite, a sweep split into small suites) would spend again and again. So a run takes this
host's entry for the same device, dtype, thread count and PyTorch version from a cache file when
it was measured within :data:`MAX_AGE_S`, labelled ``reused`` with the time it was measured, and
stores what it measures itself. The figures stay measured: on this host, by this PyTorch, at the
time shown in the run's ``run.json``, and the probe timed beside each case still sets the
ceiling when the machine is faster now. The file is ``$XDG_CACHE_HOME/attnbench/calibration.json``
(``~/.cache`` without the variable), or the path in ``ATTNBENCH_CALIBRATION_CACHE``; that
variable set to ``off`` (or empty) makes every run measure and store nothing.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from attnbench.sweep.workers import WorkerFailure, WorkerPool

ENV = "ATTNBENCH_CALIBRATION_CACHE"
#: An entry older than this is measured again (a day: a machine's ceilings drift with its
#: kernel, its firmware and its neighbours).
MAX_AGE_S = 24 * 3600.0


def default_path() -> Path:
    """Where the cache lives unless ``ATTNBENCH_CALIBRATION_CACHE`` says otherwise."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "attnbench" / "calibration.json"


KEY_FIELDS = ("host", "torch", "device", "dtype", "requested_threads")


class CalibrationCache:
    """The entries of one cache file, keyed by host, PyTorch version, device, dtype and threads."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def from_env(cls) -> CalibrationCache | None:
        """The cache this process uses: the default file, the variable's path, or None (``off``)."""
        value = os.environ.get(ENV)
        if value is None:
            return cls(default_path())
        value = value.strip()
        return cls(Path(value)) if value and value.lower() not in ("off", "0", "none") else None

    def _entries(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []  # absent or torn: measured again, never guessed
        return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []

    @staticmethod
    def _key(entry: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(entry.get(k) for k in KEY_FIELDS)

    def find(self, **key: Any) -> dict[str, Any] | None:
        """The entry measured for ``key`` (the :data:`KEY_FIELDS`), or None."""
        wanted = tuple(key.get(k) for k in KEY_FIELDS)
        for entry in self._entries():
            if self._key(entry) == wanted and entry.get("gflops") and _age_s(entry) <= MAX_AGE_S:
                return dict(entry)
        return None

    def add(self, entry: dict[str, Any]) -> None:
        """Store a measured entry (replacing one with the same key); written atomically."""
        kept = [e for e in self._entries() if self._key(e) != self._key(entry)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".calibration-")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump([*kept, entry], out, indent=1)
        os.replace(tmp, self.path)


def _age_s(entry: dict[str, Any]) -> float:
    """Seconds since the entry was measured (infinite when it does not say when)."""
    try:
        when = dt.datetime.fromisoformat(str(entry.get("measured_at")))
    except ValueError:
        return math.inf
    if when.tzinfo is None:
        return math.inf
    return (dt.datetime.now(dt.UTC) - when).total_seconds()


def measure(pool: WorkerPool, where: str, dtype: str, threads: int) -> dict[str, Any]:
    """One calibration measured on a worker of ``pool`` (:mod:`attnbench.measure.calibrate`); a failed one
    is an entry with no peak and its ``error``."""
    job = {"op": "calibrate", "device": where, "dtype": dtype, "threads": threads}
    try:
        entry: dict[str, Any] = pool.request(job, 600)["calibration"]
    except (WorkerFailure, KeyError) as exc:
        entry = {"device": where, "dtype": dtype, "threads": threads, "gflops": None, "failure": str(exc)}
    return entry


def calibrate_run(
    info: dict[str, Any],
    host: str,
    torch_version: str | None,
    wanted: Iterable[tuple[str, str, int]],
    pool_for: Callable[[str], WorkerPool],
    stamp: Callable[[], str],
) -> None:
    """Add to ``info["calibration"]`` each (device, dtype, threads) of ``wanted`` that this host has
    not measured yet: from the cache where it holds a recent one (labelled ``reused``), else
    measured on ``pool_for(device)`` (and stored in the cache when it succeeded)."""
    mine = [c for c in info["calibration"] if c.get("host", host) == host]
    have = {(c["device"], c["dtype"], c["requested_threads"]) for c in mine}
    cache = CalibrationCache.from_env()
    for where, dtype, threads in sorted(set(wanted) - have):
        key = {"host": host, "torch": torch_version, "device": where, "dtype": dtype, "requested_threads": threads}
        found = cache.find(**key) if cache else None
        if found is not None:
            info["calibration"].append({**found, "reused": found.get("measured_at") or "unknown"})
            continue
        entry = measure(pool_for(where), where, dtype, threads)
        entry.update(key, measured_at=stamp())
        info["calibration"].append(entry)
        if cache is not None and entry.get("gflops") and entry.get("rates"):
            cache.add(entry)
