"""Paired timings: the two sides of a declared ratio timed alternately in one worker.

A ``[[ratio]]`` whose peer is not the implementation's interleaved baseline compares two records
timed minutes apart: a ratio across dtypes (bfloat16 ÷ float32), across patterns (full ÷
causal) or against another implementation of the grid (``flex``). On a machine whose speed
drifts — a shared host, a busy neighbour — such a ratio carries the drift: in one ``kernels``
run on a two-core VM, ratios between separate records of the same two calls missed the
interleaved figure by 4% at the median and by 20% at worst, and a kernel whose causal pass
costs 0.63 of its full pass (timed in pairs) read 0.75.

So after the sweep, for every bounded ``speed`` ratio, the runner times each (implementation's
case, peer's case) pair once more, alternately in one worker (A, B, A, B, …: the timing loop
the baseline uses, :func:`attnbench.measure.timing.measure`), and keeps both sets of samples in
``pairs.jsonl`` beside the records. The report takes a ratio from its paired samples where they
exist (noted "paired"); the records keep their own figures. Each pair is timed only when both
records are ``ok``, both cases run on the same device with the same threads, and both records
ran on one host (``host``); a pair is timed only on that host (a Ray or merged run resumed on
another machine prints why and leaves it untimed), and its row says where it was timed
(``timed_on``).

A bounded ``slope`` is fitted to records of several lengths, timed minutes apart, and carries the
same drift: a machine that slows by 20% steadily from the first length to the last of 4K–64K
moves the fitted slope by log(1.2)/log(16) = 0.07. So each length of such a group (the other case
fields, and the key length as "the query length" or a fixed one, held equal; at least
:data:`MIN_LENGTHS` query lengths, all recorded on one host) is also timed alternately with the
next shorter one: the pair's ``case`` is the longer length, its ``peer_case`` the shorter. The
report fits the slope to the lengths' times chained through those steps (:func:`chain`): every
step between neighbouring lengths is measured in one worker.

The report's scaling table holds each implementation to the time growth it declares, and flags
a slope fitted to its records more than 0.2 above the claim. Drift between the records must not
be what flags it: where the records' slope breaks ``claim + margin`` (:func:`claims`), the
group's neighbouring lengths are timed in pairs the same way, under the name :data:`CLAIM`, and
the table fits the slope to the chained times (:func:`attnbench.results.report.fit.scaling_table`).

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import itertools
import json
import math
import socket
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from attnbench.case.keys import CASE_KEYS, as_text, value
from attnbench.case.status import Status
from attnbench.measure.records import read_records
from attnbench.sweep.ratios import Ratio
from attnbench.sweep.workers import WorkerDied, WorkerFailure, WorkerPool, WorkerTimeout

#: The file, in a result folder, that holds the paired timings.
PAIRS_FILE = "pairs.jsonl"


@dataclass(frozen=True)
class Pairing:
    """One pair to time: ``impl`` on ``case`` against ``peer`` on ``peer_case``, for ``ratio``."""

    ratio: str
    impl: str
    case: dict[str, Any]
    peer: str
    peer_case: dict[str, Any]
    host: str = ""  # where both records ran ("" when they do not say)

    def key(self) -> tuple[Any, ...]:
        return pair_key(self.ratio, self.impl, self.case)

    def step(self) -> tuple[Any, ...]:
        """What is timed, whatever the ratio: both implementations and both cases."""
        return step_key(self.impl, self.case, self.peer, self.peer_case)


def step_key(impl: str, case: dict[str, Any], peer: str, peer_case: dict[str, Any]) -> tuple[Any, ...]:
    return (impl, *_case_text(case), peer, *_case_text(peer_case))


def pair_key(ratio: str, impl: str, case: dict[str, Any]) -> tuple[Any, ...]:
    """The identity of a pairing: the ratio's name, the implementation and its case."""
    return (ratio, impl, *_case_text(case))


def _case_text(case: dict[str, Any]) -> tuple[str, ...]:
    """A case's fields as text, alike whether they come from a record or from a report's frame."""
    return tuple(as_text(value(case, k)) for k in CASE_KEYS)


def case_of(record: dict[str, Any]) -> dict[str, Any]:
    """A record's case fields."""
    return {k: value(record, k) for k in CASE_KEYS}


def matches(case: dict[str, Any], where: dict[str, list[Any]]) -> bool:
    return all(case.get(key) in values for key, values in where.items())


#: The name under which the neighbouring lengths of a group that breaks its declared time growth
#: are paired (the ``ratio`` of its pairs).
CLAIM = "declared time growth"
#: How far above its declared time growth a fitted slope is flagged (the report's scaling table),
#: and so where a group's lengths are paired.
FLAG_MARGIN = 0.2


def claims(declarations: dict[str, dict[str, Any]], margin: float = FLAG_MARGIN) -> list[Ratio]:
    """A slope bound per implementation that declares its time growth: the claim plus ``margin``
    (the scaling table's flag), checked where the records break it (``plan(..., claimed=...)``)."""
    out = []
    for name, decl in declarations.items():
        growth = decl.get("time_growth")
        if growth is not None:
            out.append(Ratio(CLAIM, name, name, "slope", at_most=float(growth) + margin))
    return out


def for_run(
    ratios: list[Ratio], declarations: dict[str, dict[str, Any]], sharded: bool
) -> tuple[list[Ratio], list[Ratio]]:
    """What a run pairs after its sweep: its suite's ratios and its implementations' claims
    (:func:`claims`). A shard holds only some lengths of a group: its slopes and claims are left
    to a resume of the merged folder."""
    if sharded:
        return [r for r in ratios if r.metric != "slope"], []
    return ratios, claims(declarations)


def plan(ratios: list[Ratio], records: list[dict[str, Any]], claimed: list[Ratio] | None = None) -> list[Pairing]:
    """The pairs to time for the bounded ``speed`` ratios: every ``ok`` record of the ratio's
    implementation in its cases whose peer record is ``ok`` too on the same host, unless the peer
    was already timed beside it as its baseline, or the two cases differ in device or threads;
    and for the bounded ``slope`` ratios, each length against the next shorter one
    (:func:`_neighbours`); for the ``claimed`` growths, the same in each group of query lengths
    whose records' slope breaks the claim. A case recorded twice counts by its last record."""
    records = list({(r["impl"], *_case_text(r)): r for r in records}.values())
    ok = {(r["impl"], *_case_text(r)): str(r.get("host") or "") for r in records if r.get("status") == Status.OK}
    out: list[Pairing] = []
    for ratio in ratios:
        if ratio.metric == "slope" and ratio.bound():
            out += _neighbours(ratio, records)
        if ratio.metric != "speed" or not ratio.bound():
            continue
        for record in records:
            case = case_of(record)
            if record.get("status") != Status.OK or record["impl"] != ratio.impl or not matches(case, ratio.where):
                continue
            if not ratio.peer_case and record.get("baseline") == ratio.peer and record.get("baseline_samples_ms"):
                continue  # interleaved already
            peer_case = {**case, **ratio.peer_case}
            if any(peer_case[k] != case[k] for k in ("device", "threads")):
                continue
            host = str(record.get("host") or "")
            if ok.get((ratio.peer, *_case_text(peer_case))) != host:
                continue  # the peer failed, or ran on another machine
            out.append(Pairing(ratio.name, ratio.impl, case, ratio.peer, peer_case, host))
    steps = {p.step() for p in out}
    for claim in claimed or []:  # a step a slope ratio times already serves the claim too
        out += [p for p in _neighbours(claim, records, breaking=True) if p.step() not in steps]
    return out


#: The case fields a slope's lengths differ in; the other fields name its group.
LENGTHS = ("seq_len", "kv_len")
#: Query lengths a group needs for a fitted slope (:data:`attnbench.results.report.fit.MIN_POINTS`).
MIN_LENGTHS = 3


def slope_group(case: dict[str, Any]) -> tuple[str, ...]:
    """The group of lengths a case belongs to for a slope: its fields other than the lengths, and
    its key length as the report's ``kv_rel`` names it for a sweep of the query length: "self"
    (the query length) or "Nk=…" (a fixed one)."""
    kv = "self" if int(case["kv_len"]) == int(case["seq_len"]) else f"Nk={int(case['kv_len'])}"
    return (*(as_text(case[k]) for k in CASE_KEYS if k not in LENGTHS), kv)


def _neighbours(ratio: Ratio, records: list[dict[str, Any]], breaking: bool = False) -> list[Pairing]:
    """For a bounded slope: in each group of at least :data:`MIN_LENGTHS` ``ok`` query lengths
    recorded on one host, each length against the next shorter one; with ``breaking``, only in
    the self-attention groups (``Nk = N``) whose records' fitted slope breaks the bound."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for record in records:
        case = case_of(record)
        if record.get("status") == Status.OK and record["impl"] == ratio.impl and matches(case, ratio.where):
            groups.setdefault(slope_group(case), []).append(record)
    out: list[Pairing] = []
    for members in groups.values():
        hosts = {str(r.get("host") or "") for r in members}
        if len(hosts) > 1 or len({int(r["seq_len"]) for r in members}) < MIN_LENGTHS:
            continue  # a chain across machines, or too few lengths for a fit: nothing to pair
        (host,) = hosts
        if breaking and not _breaks(ratio, members):
            continue
        cases = sorted((case_of(r) for r in members), key=lambda c: int(c["seq_len"]))
        for shorter, longer in itertools.pairwise(cases):
            out.append(Pairing(ratio.name, ratio.impl, longer, ratio.impl, shorter, host))
    return out


def _breaks(ratio: Ratio, members: list[dict[str, Any]]) -> bool:
    """Whether a self-attention group's least-squares slope of log time on log N breaks the bound."""
    if any(slope_group(case_of(r))[-1] != "self" for r in members):
        return False  # claims are exponents of N with Nk = N
    points = [(math.log(int(r["seq_len"])), math.log(float(r["time_ms"]))) for r in members if _positive(r)]
    if len({x for x, _ in points}) < MIN_LENGTHS:
        return False
    slope = statistics.linear_regression([x for x, _ in points], [y for _, y in points]).slope
    return ratio.holds(slope) is False


def _positive(record: dict[str, Any]) -> bool:
    t = record.get("time_ms")
    return isinstance(t, int | float) and math.isfinite(t) and t > 0


def run_pairs(
    folder: Path,
    ratios: list[Ratio],
    budget: dict[str, float],
    pool_for: Callable[[str], WorkerPool],
    show_progress: bool = True,
    claimed: list[Ratio] | None = None,
) -> None:
    """Time every pair of :func:`plan` on the folder's records that ``pairs.jsonl`` lacks, each on
    a worker of ``pool_for(device)``, appending each outcome (samples, or why there are none)."""
    rows = read_pairs(folder)
    done = {pair_key(r["ratio"], r["impl"], r["case"]): _case_text(r["peer_case"]) for r in rows}
    timed = {step_key(r["impl"], r["case"], r["peer"], r["peer_case"]) for r in rows if usable(r)}
    planned = plan(ratios, read_records(folder / "results.jsonl"), claimed)
    todo = [p for p in planned if done.get(p.key()) != _case_text(p.peer_case)]  # new, or its peer changed
    todo = [p for p in todo if p.ratio != CLAIM or p.step() not in timed]  # a claim reuses any timed step
    here = socket.gethostname()
    for index, pairing in enumerate(todo, 1):
        job = {"op": "pair", **asdict(pairing), "budget": budget}
        if pairing.host and pairing.host != here:  # not kept: a resume on that host times it
            result = {"failure": f"not timed: its records ran on {pairing.host}, this is {here}"}
        else:
            result = _time(pairing, job, budget, pool_for)
            append_pair(folder, pairing, result)
        if show_progress:
            said = result.get("failure") or _paired_words(pairing, result)
            print(f"[pair {index}/{len(todo)}] {pairing.ratio}: {_case_words(pairing)}: {said}", flush=True)


def _time(
    pairing: Pairing, job: dict[str, Any], budget: dict[str, float], pool_for: Callable[[str], WorkerPool]
) -> dict[str, Any]:
    """One pair's samples from a worker of its device (or why there are none)."""
    try:
        answer = pool_for(str(pairing.case["device"])).request(job, 2 * budget["timeout_s"] + budget["max_time_s"])
    except WorkerFailure as exc:
        why = "ran past its budget" if isinstance(exc, WorkerTimeout) else "crashed the worker"
        why += f" ({exc.reason})" if isinstance(exc, WorkerDied) else ""
        return {"failure": f"the paired timing {why}"}
    result: dict[str, Any] = answer.get("pair") or {"failure": answer.get("fatal", "no answer")}
    return result


def _case_words(pairing: Pairing) -> str:
    """``impl N=… dtype pattern`` against ``peer`` and what its case changes."""
    case = pairing.case
    changed = " ".join(f"{k}={v}" for k, v in pairing.peer_case.items() if case.get(k) != v)
    pattern = "causal" if case["causal"] else "full"
    return f"{pairing.impl} N={case['seq_len']} {case['dtype']} {pattern} against {pairing.peer} {changed}".rstrip()


def _paired_words(pairing: Pairing, result: dict[str, Any]) -> str:
    """The medians and their ratio: × faster against a peer; the time's growth and its exponent
    between two lengths of one implementation."""
    impl, peer = result.get("impl_ms") or [], result.get("peer_ms") or []
    if not impl or not peer:
        return "no samples"
    a, b = statistics.median(impl), statistics.median(peer)
    longer, shorter = int(pairing.case["seq_len"]), int(pairing.peer_case["seq_len"])
    if pairing.peer == pairing.impl and longer > shorter and a > 0 and b > 0:
        exponent = math.log(a / b, longer / shorter)
        growth = f"{a / b:.3g}x the time at {longer / shorter:.3g}x the length: N^{exponent:.2f}"
    else:
        growth = f"{b / a:.3g}x"
    return f"{a:.3f} ms against {b:.3f} ms ({growth}), {len(impl)} samples each"


def read_pairs(folder: Path) -> list[dict[str, Any]]:
    """The paired timings of a result folder (none when it has no ``pairs.jsonl``)."""
    path = folder / PAIRS_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def append_pair(folder: Path, pairing: Pairing, result: dict[str, Any]) -> None:
    """Add one pair's outcome (samples, or an ``error``) to the folder's ``pairs.jsonl``."""
    with (folder / PAIRS_FILE).open("a", encoding="utf-8") as out:
        out.write(json.dumps({**asdict(pairing), **result}, allow_nan=True) + "\n")


def length_steps(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Every usable paired row by :func:`step_key`: what was timed against what, whatever ratio
    timed it (a bounded slope's or a claim's step serves both), for :func:`chain`."""
    return {step_key(r["impl"], r["case"], r["peer"], r["peer_case"]): r for r in rows if usable(r)}


def chain(
    cases: list[dict[str, Any]], impl: str, steps: dict[tuple[Any, ...], dict[str, Any]]
) -> list[dict[str, Any]] | None:
    """The timed steps that link ``cases`` (sorted by length), each length against the one before
    it (:func:`length_steps`); None unless every step was timed."""
    found = []
    for shorter, longer in itertools.pairwise(cases):
        step = steps.get(step_key(impl, longer, impl, shorter))
        if step is None or not (statistics.median(step["impl_ms"]) > 0 and statistics.median(step["peer_ms"]) > 0):
            return None
        found.append(step)
    return found


def usable(row: dict[str, Any]) -> bool:
    """A paired row with samples on both sides, timed on the host of its records (where both are
    known)."""
    host = row.get("host")
    return bool(row.get("impl_ms") and row.get("peer_ms")) and (not host or row.get("timed_on") in (None, host))


def by_key(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Usable paired timings (:func:`usable`) by :func:`pair_key`."""
    return {pair_key(r["ratio"], r["impl"], r["case"]): r for r in rows if usable(r)}
