"""The nox sessions' own logic (the sessions themselves install and run; CI runs the tests)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the noxfile sits at the root
import noxfile


def _run(results: Path, name: str, suite: str, machine: str, started: str) -> Path:
    folder = results / name
    folder.mkdir(parents=True)
    meta = {"suite": {"name": suite}, "machine": {"id": machine}, "started": started}
    (folder / "run.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


def test_the_kernels_gate_compares_with_the_last_run_of_the_same_suite_and_machine(tmp_path: Path) -> None:
    old = _run(tmp_path, "a", "kernels", "vm-cpu", "2026-11-01T10:00:00+00:00")
    last = _run(tmp_path, "b", "kernels", "vm-cpu", "2026-11-02T10:00:00+00:00")
    _run(tmp_path, "c", "kernels", "other-host-cpu", "2026-11-03T10:00:00+00:00")  # another machine
    _run(tmp_path, "d", "quick", "vm-cpu", "2026-11-04T10:00:00+00:00")  # another suite
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "run.json").write_text("{torn", encoding="utf-8")  # unreadable: ignored
    new = _run(tmp_path, "f", "kernels", "vm-cpu", "2026-11-05T10:00:00+00:00")
    assert noxfile.last_run(tmp_path, "kernels", "vm-cpu", before=new) == last
    assert noxfile.last_run(tmp_path, "kernels", "vm-cpu", before=last) == new
    assert noxfile.last_run(tmp_path, "kernels", "vm-cpu") == new
    assert noxfile.last_run(tmp_path, "kernels", "nowhere-cpu") is None
    assert old != last
