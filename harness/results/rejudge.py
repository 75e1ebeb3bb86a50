"""``attnbench rejudge DIR``: a run's accuracy verdicts reached again by today's criterion.

A verdict depends on the criterion it was reached by, and a criterion can be found wrong after the
records exist (the row-by-row bound once called PyTorch's own SDPA inaccurate). This judges the
chosen records of a result folder again — by default those that ended ``inaccurate`` — with
today's check (:func:`attnbench.measure.verify.check`: the same case, seed and number of sampled rows; no
timing), in this process, and writes one line per record to ``rejudged.jsonl`` beside
``results.jsonl``, which is left as it was. Reading the folder (:mod:`attnbench.results.read`) applies
the new verdict and its figures, and the record's ``check_note`` says that it was re-judged, where,
by which commit, and what it was before. Implementations the folder used must be available here
(``--plugin`` for a plugin's).

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attnbench.case.keys import CASE_KEYS, record_key
from attnbench.case.problem import Problem
from attnbench.case.status import Status
from attnbench.measure.machine import cpu_model, git_commit
from attnbench.measure.records import read_records
from attnbench.measure.verify import check
from attnbench.plugins.registry import Registry

FILE = "rejudged.jsonl"
#: The fields of a record a re-judgement replaces.
FIELDS = (
    "status", "reason", "checks", "check_figures", "max_abs_err", "rel_err", "accuracy_bound", "accuracy_plain_err",
    "accuracy_rows",
)  # fmt: skip


def chosen(records: list[dict[str, Any]], only: list[str] | None) -> list[dict[str, Any]]:
    """The records to judge again: the named implementations' checked records, else every
    ``inaccurate`` one."""
    judged = (Status.OK.value, Status.INACCURATE.value)
    if only:
        return [r for r in records if r["impl"] in only and r["status"] in judged]
    return [r for r in records if r["status"] == Status.INACCURATE.value]


def rejudge(
    folder: Path,
    registry: Registry,
    only: list[str] | None = None,
    say: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Judge the chosen records of ``folder`` again and write ``rejudged.jsonl``; returns its lines."""
    records = read_records(folder / "results.jsonl")
    lines = []
    where = f"{socket.gethostname()} ({cpu_model()})"
    commit = git_commit()
    for row in chosen(records, only):
        problem = Problem(**{k: row[k] for k in CASE_KEYS if k in row}, seed=int(row.get("seed", 0)))
        impl = registry.get(str(row["impl"]))
        result = check(impl, problem, max_rows=int(row.get("accuracy_rows") or 256))
        out = result.output
        line = {
            **{k: row.get(k) for k in ("impl", *CASE_KEYS, "seed")},
            "status": (Status.OK if result.ok else Status.INACCURATE).value,
            "reason": "" if result.ok else result.failures(),
            "checks": result.checks,
            "check_figures": result.figures(),
            "max_abs_err": out.max_abs_err,
            "rel_err": out.rel_err,
            "accuracy_bound": out.bound,
            "accuracy_plain_err": out.plain_err,
            "accuracy_rows": result.rows,
            "was": {"status": row["status"], "reason": row.get("reason", "")},
            "rejudged_by": commit,
            "rejudged_on": where,
        }
        lines.append(line)
        say(f"{line['status']:<10} {row['impl']} {problem.label()} (was {row['status']})")
    tmp = folder / (FILE + ".tmp")
    tmp.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, folder / FILE)
    return lines


def apply(rows: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """``rows`` with the verdicts of ``folder/rejudged.jsonl`` applied (as they are without one)."""
    path = folder / FILE
    if not path.is_file():
        return rows
    again = {record_key(line): line for line in read_records(path)}
    out = []
    for row in rows:
        line = again.get(record_key(row))
        if line is None or row.get("status") not in (Status.OK.value, Status.INACCURATE.value):
            out.append(row)
            continue
        was = line.get("was") or {}
        note = (
            f"accuracy re-judged by today's criterion at commit {str(line.get('rejudged_by') or '?')[:9]} on"
            f" {line.get('rejudged_on')}: was {was.get('status')}"
            + (f" ({was.get('reason')})" if was.get("reason") else "")
        )
        updated = {**row, **{k: line[k] for k in FIELDS if k in line}}
        updated["check_note"] = "; ".join(n for n in (row.get("check_note") or "", note) if n)
        out.append(updated)
    return out
