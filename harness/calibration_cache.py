"""Reusing a host's calibration across runs, when asked to (``ATTNBENCH_CALIBRATION_CACHE``).

Every run measures the matrix-product peak and the bandwidth of each (device, dtype, threads) it
sweeps: about two seconds each on a two-core CPU. Many short runs in a row (a test suite, a
sweep split into many small suites) spend much of their time there. With the environment
variable set to a file, a run takes this host's entry for the same device, dtype, thread count
and PyTorch version from that file, labelled ``reused`` with the time it was measured, and adds
what it measures itself. The figures stay measured: on this host, by this PyTorch, at the time
shown in the run's ``run.json``. Unset (the default), nothing is read or written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

ENV = "ATTNBENCH_CALIBRATION_CACHE"
KEY_FIELDS = ("host", "torch", "device", "dtype", "requested_threads")


class CalibrationCache:
    """The entries of one cache file, keyed by host, PyTorch version, device, dtype and threads."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def from_env(cls) -> CalibrationCache | None:
        value = os.environ.get(ENV, "").strip()
        return cls(Path(value)) if value else None

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
            if self._key(entry) == wanted and entry.get("gflops") and not entry.get("error"):
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
