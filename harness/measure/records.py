"""One record per (case, implementation): the schema, the append-only writer and the loader.

``results.jsonl`` holds one flat JSON object per line, written and flushed (and fsynced) as each
pair finishes, so a killed run loses at most the pair in flight. A torn last line (the runner
killed mid-write) is ignored by the reader and trimmed before a resumed run appends.

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from attnbench.case.keys import CASE_KEYS, DEFAULTS, record_key
from attnbench.case.status import Status

SCHEMA_VERSION = 2
#: The keys of a record's ``cost_s`` beside its steps: the seconds spent in timed calls of the
#: implementation, of the interleaved baseline and of the machine probe.
TIMED_IMPL, TIMED_BASELINE, TIMED_PROBE = "timed implementation", "timed baseline", "timed probe"
__all__ = ["CASE_KEYS", "RECORD_FIELDS", "Record", "RecordWriter", "read_records", "record_key"]


@dataclass(init=False)
class Record:
    """The outcome of one implementation on one case. Times in milliseconds, memory in bytes.

    ``case`` holds the case's fields (:data:`attnbench.case.keys.CASE_KEYS` and the seed); the record
    is written flat, the case's fields beside the measurements. ``Record(impl, status, seq_len=…,
    time_ms=…)`` sorts keyword arguments into the two."""

    impl: str
    status: str  # a Status value
    reason: str = ""  # why it is not ok (the failure, or what the implementation says)
    step: str = ""  # the step it ended in (attnbench.measure.steps): "done", or where it failed
    case: dict[str, Any] = field(default_factory=dict)
    threads_used: int | None = None  # CPU threads the case really ran with
    device_name: str = ""  # what ran it: the CPU's model or the GPU's name
    host: str = ""  # the machine (node) that ran it
    # what the implementation is
    exact: bool | None = None
    # timing
    time_ms: float | None = None  # median
    time_q1_ms: float | None = None
    time_q3_ms: float | None = None
    time_min_ms: float | None = None
    samples_ms: list[float] = field(default_factory=list)
    inner: int | None = None  # calls per sample
    unstable: bool | None = None
    setup_s: float | None = None  # set-up outside the timing (e.g. compilation)
    adapter: str = ""  # how it was called when it does not read the case's inputs itself (decode)
    tokens_per_s: float | None = None  # decode: new tokens per second (batch × seq_len per step)
    # the within-run baseline, interleaved with this implementation
    baseline: str = ""
    baseline_time_ms: float | None = None
    baseline_samples_ms: list[float] = field(default_factory=list)
    speedup: float | None = None  # baseline time / this time (> 1: faster than the baseline)
    baseline_note: str = ""  # why there is no baseline time (unavailable, failed, over its budget)
    # the machine probe timed beside it (a fixed matrix product, or a memory sweep)
    machine_probe: str = ""
    machine_probe_ms: list[float] = field(default_factory=list)
    machine_probe_work: float | None = None  # FLOPs (matmul) or bytes (triad) of one probe call
    machine_load: float | None = None  # share of the usable cores' time other processes took while it was timed
    # memory
    peak_mem_bytes: int | None = None
    # work
    flops: float | None = None  # as the implementation counts it (softmax: the pairs computed); None: not counted
    flops_counted: str = ""  # how: "softmax", "declared" or "none" (attnbench.case.work.COUNTED)
    dense_flops: float | None = None  # softmax attention over every pair of the same shapes
    gflops: float | None = None
    peak_gflops: float | None = None  # the matmul ceiling it is set against (calibration or the probe beside it)
    peak_fraction: float | None = None
    bytes: float | None = None  # the least one call moves (inputs read, outputs written once)
    gbps: float | None = None
    peak_gbps: float | None = None  # the memory-bandwidth ceiling it is set against
    bandwidth_fraction: float | None = None
    # accuracy
    max_abs_err: float | None = None  # against the reference of its own semantics
    rel_err: float | None = None
    accuracy_bound: float | None = None
    accuracy_plain_err: float | None = None  # the plain computation's error in the same dtype (exact)
    accuracy_rows: int | None = None  # query rows checked (all rows when equal to seq_len)
    checks: list[str] = field(default_factory=list)  # what was compared: output, dq, dk, dv
    check_figures: list[list[Any]] = field(default_factory=list)  # [[what, error, plain error, bound], ...]
    check_note: str = ""  # a check that did not run, and why; an own reference() that differs
    full_max_abs_err: float | None = None  # against full softmax attention (approximations)
    full_rel_err: float | None = None
    uniform_rel_err: float | None = None  # uniform attention (the mean of V) against full softmax attention
    own_reference_differs: bool | None = None  # exact, but its own reference() is another function
    # fidelity on a probe (attnbench.measure.fidelity): where it attends, against unrestricted softmax attention
    probe_mass: float | None = None  # softmax attention's share on the planted targets
    recovered: float | None = None  # the share of it the output recovers (1: as softmax; 0: chance)
    uniform_recovered: float | None = None  # uniform attention's, the floor
    probe_rel_err: float | None = None  # distance from unrestricted softmax attention on the probe
    retrieval_curve: list[list[float]] = field(default_factory=list)  # [[d_lo, d_hi, recovered, rows]]
    attention_map: str = ""  # the recovered attention matrix (head 0), float16 base64, short cases
    softmax_map: str = ""  # unrestricted softmax attention's, on the same inputs
    # bookkeeping
    suite: str = ""
    machine: str = ""
    elapsed_s: float | None = None
    cost_s: dict[str, float] = field(default_factory=dict)  # seconds by step, and timed by whom (TIMED_*)
    worker_pid: int | None = None
    # where it ran, beyond host and device_name (a Ray cluster's node, the GPU of a Ray task)
    node: str = ""  # Ray's node id ("" outside Ray)
    gpu_index: int | None = None  # the GPU's index on its host, as Ray reserved it
    driver: str = ""  # the GPU driver's version

    def __init__(self, impl: str, status: str, case: dict[str, Any] | None = None, **values: Any) -> None:
        self.impl, self.status = impl, status
        self.case = {**DEFAULTS, "seed": 0, **(case or {})}
        for key in [k for k in values if k in CASE_KEYS or k == "seed"]:
            self.case[key] = values.pop(key)
        for f in fields(self):
            if f.name in ("impl", "status", "case"):
                continue
            if f.name in values:
                setattr(self, f.name, values.pop(f.name))
            else:
                factory = f.default_factory
                setattr(self, f.name, factory() if callable(factory) else f.default)
        if values:
            raise TypeError(f"Record: unknown fields {sorted(values)}")

    def update(self, values: dict[str, Any]) -> None:
        """Set several fields at once (every key must be a field of the record)."""
        for key, value in values.items():
            if key not in _FIELD_NAMES:
                raise TypeError(f"Record: unknown field {key!r}")
            setattr(self, key, value)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Record:
        """A record read back (fields it does not know — from another version — are dropped)."""
        known = {k: v for k, v in row.items() if k in RECORD_FIELDS}
        return cls(**known)

    def key(self) -> tuple[Any, ...]:
        return record_key(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        """The flat form written to ``results.jsonl``: identity, case fields, measurements."""
        out = asdict(self)
        case = out.pop("case")
        head = {k: out.pop(k) for k in ("impl", "status", "reason", "step")}
        return {**head, **case, **out}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), allow_nan=True, separators=(",", ":"))


_FIELD_NAMES = frozenset(f.name for f in fields(Record))
#: The columns of a record, in the order they are written.
RECORD_FIELDS: tuple[str, ...] = tuple(Record(impl="", status=Status.OK).as_dict())


class RecordWriter:
    """Appends records to ``results.jsonl``, one flushed and fsynced line each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _trim_torn_tail(path)
        self._fh: IO[str] = path.open("a", encoding="utf-8")

    def write(self, record: Record) -> None:
        self._fh.write(record.to_json() + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _trim_torn_tail(path: Path) -> None:
    """Cut a last line that was not completely written (no trailing newline)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    with path.open("r+b") as fh:
        fh.truncate(keep)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record in a ``results.jsonl`` (a torn last line is skipped)."""
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
