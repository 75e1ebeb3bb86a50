"""``attnbench merge``: the shards of one suite joined into one result folder.

The merged folder is like any other: a ``run.json`` for the whole suite (its text and hash, no
shard), a ``results.jsonl`` with every record, in the suite's order, and every shard's paired
timings in ``pairs.jsonl`` (:mod:`attnbench.sweep.pairs`), so that ``report``,
``compare`` and ``--resume`` treat it as a run of the whole suite — ``--resume`` then runs only
the pairs that no shard recorded, and the paired timings the shards left (slopes and claims,
whose lengths span shards).

Merging refuses, naming the folders or the pair, shards of different suites (the hash of the
suite's text differs) and a pair recorded by two folders. Pairs no folder recorded are listed:
the plan each shard keeps in its ``run.json`` (every pair of the suite and its shard) names
them, also those of a shard whose folder was not given.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnbench.case.keys import case_label, record_key
from attnbench.measure.records import read_records
from attnbench.sweep.folder import RunError, now, read_run_json, suite_hash
from attnbench.sweep.pairs import PAIRS_FILE, read_pairs
from attnbench.sweep.shards import Shard


class MergeError(Exception):
    """Folders that cannot be merged, in one sentence naming them."""


@dataclass
class Merged:
    """What a merge wrote: the folder, how many records, and the pairs still missing (with the
    shard that should have run each, where the shards planned it)."""

    out: Path
    records: int
    missing: list[tuple[str, Shard]] = field(default_factory=list)
    planned: bool = True  # whether any folder held a plan (else the missing pairs are unknown)


#: run.json keys that describe one shard's folder, not the merged run.
PER_SHARD = ("shard", "plan", "resumed", "resumed_git_commits", "calibration")


def _suite_id(info: dict[str, Any]) -> str:
    suite = info["suite"]
    text = suite.get("text")
    return suite_hash(text) if isinstance(text, str) else str(suite.get("hash"))


def _pair_name(row: dict[str, Any]) -> str:
    return f"{row['impl']} on {case_label(row)}"


def _last_per_pair(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """One record per pair of one folder (a resumed folder's later record wins, as in reports)."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = record_key(row)
        out.pop(key, None)
        out[key] = row
    return out


def merge(dirs: list[Path], out: Path) -> Merged:
    """Merge the result folders ``dirs`` into ``out`` (new, or empty)."""
    if len({d.resolve() for d in dirs}) != len(dirs):
        raise MergeError("a folder is given twice: each shard's folder once")
    if any(out.resolve() == d.resolve() for d in dirs):
        raise MergeError(f"--out {out} is one of the folders to merge: choose a new folder")
    if (out / "results.jsonl").exists() and (out / "results.jsonl").stat().st_size:
        raise MergeError(f"{out} already holds results: choose a new --out")
    infos: list[dict[str, Any]] = []
    for d in dirs:
        if not d.is_dir():
            raise MergeError(f"no such result folder: {d}")
        try:
            infos.append(read_run_json(d))
        except RunError as exc:
            raise MergeError(str(exc).replace("to resume", "to merge").replace("be resumed", "be merged")) from None
    suites: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for d, info in zip(dirs, infos, strict=True):
        sid = _suite_id(info)
        suites.setdefault(sid, []).append(str(d))
        names.setdefault(sid, str(info["suite"].get("name")))
    if len(suites) > 1:
        parts = [f"{', '.join(folders)} ran suite {names[sid]!r} (hash {sid})" for sid, folders in suites.items()]
        raise MergeError(f"the folders come from different suites: {'; '.join(parts)}; merge shards of one suite only")

    by_pair: dict[tuple[Any, ...], dict[str, Any]] = {}
    origin: dict[tuple[Any, ...], Path] = {}
    for d in dirs:
        for key, row in _last_per_pair(read_records(d / "results.jsonl")).items():
            if key in by_pair:
                raise MergeError(f"the pair {_pair_name(row)} is recorded in both {origin[key]} and {d}")
            by_pair[key], origin[key] = row, d

    plan: dict[tuple[Any, ...], dict[str, Any]] = {}
    for info in infos:
        for entry in info.get("plan") or []:
            plan.setdefault(record_key(entry), entry)
    ordered = [by_pair[k] for k in plan if k in by_pair] + [r for k, r in by_pair.items() if k not in plan]
    count = _count(infos)
    missing = [
        (_pair_name(entry), Shard(int(entry["shard"]), count)) for key, entry in plan.items() if key not in by_pair
    ]
    _write(out, _merged_info(dirs, infos, list(plan.values()), by_pair, origin), ordered)
    timed = [row for d in dirs for row in read_pairs(d)]  # each shard's pairs are of its own records
    if timed:
        (out / PAIRS_FILE).write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in timed), encoding="utf-8")
    return Merged(out, len(ordered), missing, planned=bool(plan))


def _count(infos: list[dict[str, Any]]) -> int:
    counts = [shard.count for info in infos if (shard := Shard.from_dict(info.get("shard")))]
    return counts[0] if counts else 1


def _merged_info(
    dirs: list[Path],
    infos: list[dict[str, Any]],
    plan: list[dict[str, Any]],
    by_pair: dict[tuple[Any, ...], dict[str, Any]],
    origin: dict[tuple[Any, ...], Path],
) -> dict[str, Any]:
    """``run.json`` of the whole suite: the first folder's, with every folder's calibrations
    (each naming its host), implementations and times, and where each part came from."""
    first = infos[0]
    machines = [info.get("machine") or {} for info in infos]
    ids = list(dict.fromkeys(str(m.get("id", "")) for m in machines))
    machine = dict(machines[0])
    if len(ids) > 1:  # one label for the report, and each machine kept
        kinds = {str(m.get("id", "")).removeprefix(f"{m.get('hostname', '')}-") for m in machines}
        machine["id"] = f"{len(ids)} machines" + (f" ({kinds.pop()})" if len(kinds) == 1 else "")
        machine["machines"] = machines
    calibration = []
    for info in infos:
        host = (info.get("machine") or {}).get("hostname")
        for entry in info.get("calibration") or []:
            calibration.append({"host": host, **entry})
    implementations: dict[str, Any] = {}
    for info in infos:
        for decl in info.get("implementations") or []:
            implementations.setdefault(decl.get("name"), decl)
    started = [str(info["started"]) for info in infos if info.get("started")]
    ended = [info.get("ended") for info in infos]
    return {
        **{k: v for k, v in first.items() if k not in PER_SHARD},
        "started": min(started) if started else None,
        "ended": max(str(e) for e in ended) if ended and all(ended) else None,
        "machine": machine,
        "calibration": calibration,
        "implementations": list(implementations.values()),
        "shard": None,
        "merged": now(),
        "merged_from": [
            {
                "folder": str(d),
                "shard": info.get("shard"),
                "machine": (info.get("machine") or {}).get("id"),
                "git_commit": info.get("git_commit"),
                "started": info.get("started"),
                "ended": info.get("ended"),
                "records": sum(origin[k] == d for k in by_pair),
            }
            for d, info in zip(dirs, infos, strict=True)
        ],
        **({"plan": plan} if plan else {}),
    }


def _write(out: Path, info: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Write the folder: records first (fsynced), then ``run.json``, each through a rename."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, allow_nan=True, separators=(",", ":")) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out / "results.jsonl")
    tmp = out / "run.json.tmp"
    tmp.write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, out / "run.json")
