"""A run's folder: where a run is written by default, the identity of its suite, reading its
``run.json`` back, and the error a run that cannot start raises.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("results")  # relative to where attnbench runs


class RunError(Exception):
    """A run that cannot start (bad output folder, unknown --only name, another suite's folder)."""


def now() -> str:
    return dt.datetime.now(dt.UTC).astimezone().isoformat(timespec="seconds")


def default_out_dir(suite_name: str, machine_id: str) -> Path:
    """``results/<time>_<suite>_<machine>``."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return RESULTS_DIR / f"{stamp}_{suite_name}_{machine_id}"


def suite_hash(text: str) -> str:
    """The identity of a suite: a hash of its TOML text."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_run_json(out_dir: Path) -> dict[str, Any]:
    """``run.json`` of a result folder; a missing or corrupt one is a :class:`RunError`."""
    path = out_dir / "run.json"
    if not path.is_file():
        raise RunError(f"{out_dir} holds no run.json to resume")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is not valid JSON ({exc}); it cannot be resumed") from None
    if not isinstance(info, dict) or not isinstance(info.get("suite"), dict):
        raise RunError(f"{path} does not describe a run (no suite); it cannot be resumed")
    return info
