"""What a run cost: its wall time, and where it went.

Each record says how long each of its steps took in the worker and how much of that was timed
calls of the implementation, of the interleaved baseline and of the machine probe
(``cost_s``, :mod:`attnbench.measure.case_run`); the runner adds what only it sees: the time
before the sweep (imports, listing the plugins), starting workers, the calibration, the paired
timings after the sweep; the command adds the report (:func:`add_report`). :func:`summarize`
puts them together for one session of a run (``run.json`` keeps one per session, a resumed run
several): *efficiency* is the timed share of the wall, and without set-up (compiling a kernel,
building masks) it is the share of what the harness could have spent on kernels that it did.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from attnbench.measure import steps
from attnbench.measure.records import TIMED_BASELINE, TIMED_IMPL, TIMED_PROBE

#: A session's cost, as ``run.json`` keeps it: what each key holds.
PARTS: dict[str, str] = {
    "timed_implementations_s": "timed calls of the implementations",
    "timed_baselines_s": "timed calls of the interleaved baselines",
    "timed_probe_s": "timed calls of the machine probe",
    "setup_s": "set-up outside the timing: compiling kernels, building masks (prepare)",
    "first_calls_s": "first calls (warm-up) and baselines' first calls",
    "accuracy_checks_s": "the judged calls, each also its pair's memory pass",
    "reference_s": "the float64 reference and the verdicts",
    "start_s": "before the sweep: imports, listing the plugins, planning",
    "worker_start_s": "starting worker processes",
    "calibration_s": "measuring the machine's ceilings",
    "paired_timings_s": "paired timings after the sweep",
    "report_s": "writing the report",
    "other_s": "the rest: the steps' own bookkeeping, loading plugins, the runner, idle",
}
_FROM_STEPS = {
    "setup_s": (steps.PREPARE,),
    "first_calls_s": (steps.FIRST_CALL, steps.BASELINE),
    "accuracy_checks_s": (steps.CHECK,),
    "reference_s": (steps.REFERENCE, steps.OWN_REFERENCE),
}


def summarize(
    records: Iterable[dict[str, Any]],
    *,
    wall_s: float,
    start_s: float = 0.0,
    worker_start_s: float = 0.0,
    calibration_s: float = 0.0,
    paired_s: float = 0.0,
) -> dict[str, float]:
    """One session's cost from its records' ``cost_s`` and the runner's own figures."""
    costs = [r.get("cost_s") or {} for r in records]
    out = {
        "wall_s": wall_s,
        "timed_implementations_s": sum(c.get(TIMED_IMPL, 0.0) for c in costs),
        "timed_baselines_s": sum(c.get(TIMED_BASELINE, 0.0) for c in costs),
        "timed_probe_s": sum(c.get(TIMED_PROBE, 0.0) for c in costs),
    }
    for key, names in _FROM_STEPS.items():
        out[key] = sum(c.get(name, 0.0) for c in costs for name in names)
    out.update(start_s=start_s, worker_start_s=worker_start_s, calibration_s=calibration_s)
    out.update(paired_timings_s=paired_s, report_s=0.0)
    accounted = sum(v for k, v in out.items() if k != "wall_s")
    out["other_s"] = max(0.0, wall_s - accounted)  # the timing loop's own bookkeeping is in here too
    return out


def add_report(out_dir: Path, seconds: float) -> dict[str, float] | None:
    """Charge the report's writing to the run's last session (``run.json``); returns that session."""
    path = out_dir / "run.json"
    info = json.loads(path.read_text())
    if not info.get("cost"):
        return None
    session = info["cost"][-1]
    session["report_s"] = session.get("report_s", 0.0) + seconds
    session["wall_s"] += seconds
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str))
    os.replace(tmp, path)
    return dict(session)


def total(sessions: Iterable[dict[str, float]]) -> dict[str, float]:
    """Several sessions' costs added (a resumed run)."""
    out: dict[str, float] = {}
    for session in sessions:
        for key, value in session.items():
            out[key] = out.get(key, 0.0) + float(value)
    return out


TIMED = ("timed_implementations_s", "timed_baselines_s", "timed_probe_s")


def timed(cost: dict[str, float]) -> float:
    """Seconds of a cost spent in timed calls."""
    return sum(cost.get(key, 0.0) for key in TIMED)


def efficiency(cost: dict[str, float], without_setup: bool = False) -> float | None:
    """The timed share of the wall (with ``without_setup``, of the wall less the set-up)."""
    wall = cost.get("wall_s", 0.0) - (cost.get("setup_s", 0.0) if without_setup else 0.0)
    return timed(cost) / wall if wall > 0 else None


def words(cost: dict[str, float]) -> str:
    """``412 s of wall, 141 s of it timing kernels (efficiency 0.34; 0.45 without 97 s of set-up);
    reference 12 s, ...``: the cost on one line, the largest parts first."""
    eff, eff_setup = efficiency(cost), efficiency(cost, without_setup=True)
    head = f"{cost.get('wall_s', 0):.0f} s of wall, {timed(cost):.0f} s of it timing kernels"
    if eff is not None:
        head += f" (efficiency {eff:.2f}"
        if cost.get("setup_s", 0.0) >= 1 and eff_setup is not None:
            head += f"; {eff_setup:.2f} without {cost['setup_s']:.0f} s of set-up"
        head += ")"
    parts = sorted(
        ((k, v) for k, v in cost.items() if k in PARTS and not k.startswith("timed") and k != "setup_s" and v >= 1),
        key=lambda kv: -kv[1],
    )
    if parts:
        head += "; " + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.0f} s" for k, v in parts)
    return head
