"""Read results into a DataFrame: a result folder, its ``results.jsonl``, or pytest-benchmark JSON.

Readers (report, compare) read files, never live objects. Every loader returns one row per
record with the flat columns of :class:`attnbench.measure.records.Record`, plus

* ``machine``: the run's machine id from ``run.json`` (else the record's own, else the folder name);
* ``run``: the folder (or file) the record came from.

A result folder's figures are derived again from each record's raw samples, work and the run's
calibration by today's formulas (:func:`attnbench.measure.figures.derive`): a recorded run is read as
today's code would have written it, never from frozen fields. A record that ended ``ok`` with no
accuracy figure at all (written before ``unchecked`` existed) is read as ``unchecked``.

A result folder may hold the same (case, implementation) twice when a run was resumed; the last
record wins.

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from attnbench.case.keys import record_key
from attnbench.case.status import Status
from attnbench.measure.figures import derive
from attnbench.measure.records import RECORD_FIELDS, Record, read_records
from attnbench.results import rejudge

EXTRA_COLUMNS: tuple[str, ...] = ("run",)
_DEFAULTS: dict[str, Any] = {
    name: value for name, value in Record(impl="", status=Status.OK).as_dict().items() if name not in ("impl", "status")
}


def load_run(path: Path | str) -> dict[str, Any]:
    """The ``run.json`` of a result folder, or ``{}`` when there is none (an interrupted run)."""
    folder = Path(path)
    run_file = folder / "run.json" if folder.is_dir() else folder.parent / "run.json"
    if not run_file.is_file():
        return {}
    try:
        data = json.loads(run_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{run_file}: not valid JSON ({exc}); re-run or delete the file") from None
    return data if isinstance(data, dict) else {}


def machine_id(run: dict[str, Any], fallback: str) -> str:
    """The short machine name of a run: ``run.json``'s ``machine.id``, else ``fallback``."""
    machine = run.get("machine") or {}
    return str(machine.get("id") or machine.get("hostname") or fallback)


def load_results(path: Path | str) -> pd.DataFrame:
    """One row per record of a result folder, a ``results.jsonl`` or a pytest-benchmark JSON file."""
    src = Path(path)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such result folder or file")
    if src.is_dir():
        run = load_run(src)
        rows = _rederived(rejudge.apply(_dedupe(read_records(src / "results.jsonl")), src), run)
        label = src.name
    elif src.suffix == ".jsonl":
        run = load_run(src)
        rows = _rederived(rejudge.apply(_dedupe(read_records(src)), src.parent), run)
        label = src.parent.name
    elif src.suffix == ".json":
        rows, run = read_pytest_benchmark(src)
        label = src.stem
    else:
        raise ValueError(f"{src}: expected a result folder, a results.jsonl or a pytest-benchmark .json file")
    fallback = next((str(r["machine"]) for r in rows if r.get("machine")), label)
    machine = machine_id(run, fallback)
    return to_frame(rows, machine=machine, run=label)


def to_frame(rows: list[dict[str, Any]], machine: str | None = None, run: str = "") -> pd.DataFrame:
    """A DataFrame of records with every Record column present, in the schema's order."""
    full = []
    for row in rows:
        rec = {**_DEFAULTS, **row}
        rec["samples_ms"] = list(rec.get("samples_ms") or [])
        rec["baseline_samples_ms"] = list(rec.get("baseline_samples_ms") or [])
        if machine is not None:
            rec["machine"] = machine
        rec["run"] = run
        full.append(rec)
    columns = list(RECORD_FIELDS) + list(EXTRA_COLUMNS)
    extra = sorted({k for r in full for k in r} - set(columns))
    frame = pd.DataFrame(full, columns=columns + extra)
    return frame.astype({"impl": object, "status": object, "reason": object}) if len(frame) else frame


def _rederived(rows: list[dict[str, Any]], run: dict[str, Any]) -> list[dict[str, Any]]:
    """Each record's figures derived again by today's formulas; an ``ok`` record with no accuracy
    check is ``unchecked`` (its accuracy could not be checked: it is never ranked)."""
    calibration = run.get("calibration") or []
    out = []
    for row in rows:
        derived = derive({**_DEFAULTS, **row}, calibration)
        if derived.get("status") == Status.OK and not derived.get("checks") and derived.get("max_abs_err") is None:
            derived["status"] = Status.UNCHECKED.value
        out.append({k: derived[k] for k in (*row.keys(), *DERIVED) if k in derived})
    return out


#: The figures :func:`attnbench.measure.figures.derive` may add to a record read back.
DERIVED = (
    "time_ms", "time_q1_ms", "time_q3_ms", "time_min_ms", "baseline_time_ms", "speedup", "gflops", "peak_gflops",
    "peak_fraction", "gbps", "peak_gbps", "bandwidth_fraction", "tokens_per_s", "status",
)  # fmt: skip


def _dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the last record of each (case, implementation)."""
    last: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        try:
            key = record_key({**_DEFAULTS, **row})
        except KeyError:
            continue
        last.pop(key, None)
        last[key] = row
    return list(last.values())


def read_pytest_benchmark(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records and a run description from pytest-benchmark's ``--benchmark-json`` output.

    The case fields and the implementation's name are read from each benchmark's ``extra_info``
    (the keys of a Record), then its ``params``; the name falls back to the benchmark's name.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "benchmarks" not in data:
        raise ValueError(f"{path}: not pytest-benchmark JSON (no 'benchmarks' list)")
    info = data.get("machine_info") or {}
    node = str(info.get("node") or path.stem)
    rows = [_benchmark_record(b, node) for b in data["benchmarks"]]
    cpu = info.get("cpu") or {}
    run = {
        "machine": {
            "id": node,
            "hostname": node,
            "os": info.get("system", ""),
            "cpu": cpu.get("brand_raw", "") if isinstance(cpu, dict) else str(cpu),
            "cores": cpu.get("count") if isinstance(cpu, dict) else None,
        },
        "versions": {"python": info.get("python_version", "")},
        "started": data.get("datetime", ""),
        "source": "pytest-benchmark",
    }
    return rows, run


def _benchmark_record(bench: dict[str, Any], node: str) -> dict[str, Any]:
    extra = dict(bench.get("params") or {})
    extra.update(bench.get("extra_info") or {})
    stats = bench.get("stats") or {}
    samples = [float(s) * 1e3 for s in stats.get("data") or []]
    record: dict[str, Any] = {k: extra[k] for k in RECORD_FIELDS if k in extra}
    record.setdefault("impl", str(bench.get("name", "?")))
    record.setdefault("machine", node)
    record.setdefault("status", Status.OK.value)
    # the pytest route asserts its accuracy check before it times (files written before it said so)
    record.setdefault("checks", ["output"])

    def ms(name: str) -> float | None:
        value = stats.get(name)
        return None if value is None else float(value) * 1e3

    record.update(
        samples_ms=samples,
        time_ms=ms("median"),
        time_q1_ms=ms("q1"),
        time_q3_ms=ms("q3"),
        time_min_ms=ms("min"),
    )
    if record.get("flops") and record["time_ms"]:
        record.setdefault("gflops", record["flops"] / record["time_ms"] / 1e6)
    return record
