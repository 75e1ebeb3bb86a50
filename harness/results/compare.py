"""``attnbench compare BASE NEW``: which (case, implementation) pairs got faster or slower, and for real.

For every pair ok in both runs (key: :func:`attnbench.measure.records.record_key`), the ratio of medians
``new / base`` and a two-sided Mann–Whitney U test on the raw samples (asv's method), so that
noise is not called a change. A pair is *slower* when

1. the ratio exceeds ``1 + threshold`` (default 10%), and
2. the test is significant at ``alpha``, and
3. the same holds for the time relative to a reference timed *within* both runs, beside the
   pair: the interleaved baseline, else (for the baseline's own pairs, or a run without one) the
   machine probe — a fixed matrix product or a memory sweep interleaved with every case, set
   against its work per call so that runs whose calibration chose another probe size still
   compare. Per-sample ratios ``impl / reference`` are compared the same way.

A machine that was simply busier slows the reference too. When the reference moved beyond the
threshold and the pair kept pace with it, the pair is *same*; when the load struck the reference
and the pair unevenly, nothing tells the machine from the implementation and the pair is
*uncertain* — rerun on a quiet machine. Neither is called a regression. The machine probe is
trusted less than the baseline: when it moved beyond the threshold (either way), the load
changed by an amount it cannot measure for this pair, and a pair that moved is *uncertain* too.

Why the baseline first: on this project's 2-core machine with two spinning processes beside the
run, the probe product (about 2 ms) ran 37-74× slower while 55-190 ms attention kernels ran
1.3-2× slower, and the baseline, a kernel of the same kind and length, moved with them (the pair
against it ×0.99-1.03). A short call loses whole scheduler time slices; a long one shares them.

*Faster* is the mirror image (ratio below ``1 / (1 + threshold)``).

**Load.** Under load a call and the reference timed beside it do not slow alike: on this
project's two-core machine, beside two spinning processes, a two-threaded SDPA call read 3.12×
its quiet time while the same kernel interleaved with it as the baseline read 1.41×, so the
relative figure called two runs of the same code a regression. Each record says how busy the
rest of the machine was while it was timed (``machine_load``, :mod:`attnbench.measure.machine_load`: the share
of the usable cores' time other processes took). A pair timed under more than
:data:`LOAD_LIMIT` of load in either run is never *slower* or *faster*: it is *uncertain*, with
the load named — a real regression reads the same on a quiet machine.

**Alpha and small samples.** With ``n`` and ``m`` samples, no Mann–Whitney p-value can be below
``2 / C(n+m, n)`` (two-sided): 0.0079 with 5 against 5, 0.0022 with 6 against 6, 0.00058 with 7
against 7. :func:`choose_alpha` takes asv's 0.002 where that floor allows it (7 samples a side
or more), else 0.01 (5 a side or more); below that no test can be significant, and a change
beyond the threshold is reported as *uncertain*, never as a regression.

**Breakage.** A pair that was ok in BASE and is anything else in NEW (a failure, but also
``unavailable``, ``unsupported`` or ``skipped``), or that is missing from NEW, is reported; with
``--fail-on-regression`` either fails the comparison like a significant slowdown.
"""

from __future__ import annotations

from attnbench.case.status import Status

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import stats

from attnbench.case.keys import CASE_KEYS, group_label, record_key
from attnbench.results.report.data import records_of
from attnbench.results.report.html import render
from attnbench.results.read import load_results, load_run

ALPHA_STRICT = 0.002  # asv's threshold
#: The share of the cores' time other processes may take while a pair is timed before its change
#: cannot be told from the load (a quiet two-core machine reads under 0.1; two spinning
#: processes beside a run, about 0.5).
LOAD_LIMIT = 0.25
ALPHA_LOOSE = 0.01
Verdict = Literal["slower", "faster", "same", "uncertain"]


def p_floor(n: int, m: int) -> float:
    """The smallest two-sided p-value a Mann–Whitney U test can give with ``n`` and ``m`` samples."""
    if n < 1 or m < 1:
        return 1.0
    return min(1.0, 2.0 / math.comb(n + m, n))


def choose_alpha(n: int, m: int) -> float | None:
    """0.002 where the sample counts allow it, else 0.01, else None (too few samples to test)."""
    floor = p_floor(n, m)
    if floor < ALPHA_STRICT:
        return ALPHA_STRICT
    if floor < ALPHA_LOOSE:
        return ALPHA_LOOSE
    return None


def mann_whitney(a: list[float], b: list[float]) -> float:
    """Two-sided Mann–Whitney U p-value; 1.0 when undefined (identical constant samples)."""
    if not a or not b:
        return 1.0
    p = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return 1.0 if math.isnan(p) else p


@dataclass(frozen=True)
class Relative:
    """A pair's change measured against one within-run reference."""

    reference: str  # "probe matmul float32", "baseline sdpa"
    ratio: float  # (new / its reference) / (base / its reference)
    p_value: float | None
    verdict: Verdict

    def text(self) -> str:
        p = "" if self.p_value is None else f", p={self.p_value:.2g}"
        return f"{self.reference} ×{self.ratio:.2f} ({self.verdict}{p})"


@dataclass(frozen=True)
class PairComparison:
    """One (case, implementation) present and ok in both runs."""

    impl: str
    case: str
    seq_len: int
    base_ms: float
    new_ms: float
    ratio: float  # new / base: above 1 is slower
    p_value: float | None
    alpha: float | None
    n_base: int
    n_new: int
    relative: tuple[Relative, ...] = ()  # against the within-run reference both runs carry (none or one)
    verdict: Verdict = "same"
    note: str = ""

    @property
    def change_pct(self) -> float:
        return (self.ratio - 1.0) * 100.0


@dataclass
class CompareResult:
    base: Path
    new: Path
    threshold_pct: float
    pairs: list[PairComparison] = field(default_factory=list)
    only_base: list[dict[str, str]] = field(default_factory=list)
    only_new: list[dict[str, str]] = field(default_factory=list)
    status_changed: list[dict[str, str]] = field(default_factory=list)
    machines: tuple[str, str] = ("", "")

    def verdict(self, verdict: Verdict) -> list[PairComparison]:
        return [p for p in self.pairs if p.verdict == verdict]

    @property
    def regressions(self) -> list[PairComparison]:
        return self.verdict("slower")

    suites: tuple[str, str] = ("", "")
    warnings: list[str] = field(default_factory=list)

    @property
    def broken(self) -> list[dict[str, str]]:
        """Pairs that were ok in BASE and are anything else in NEW (a failure, unavailable,
        unsupported, skipped)."""
        return [s for s in self.status_changed if s["before"] == Status.OK]

    @property
    def vanished(self) -> list[dict[str, str]]:
        """Pairs that were ok in BASE and have no record in NEW."""
        return [s for s in self.only_base if s["status"] == Status.OK]

    def failed(self) -> list[str]:
        """Why ``--fail-on-regression`` fails, one line each (empty: it passes)."""
        lines = [f"slower: {p.impl} [{p.case}] ×{p.ratio:.2f}" for p in self.regressions]
        lines += [f"{s['before']} -> {s['after']}: {s['impl']} [{s['case']}]" for s in self.broken]
        lines += [f"vanished: {s['impl']} [{s['case']}] (ok in BASE, no record in NEW)" for s in self.vanished]
        return lines


def case_name(row: dict[str, Any]) -> str:
    """``forward · fp32 · cpu · B1 H8 D64 · full · N=1024 · 2 threads``."""
    g = {**row, "kv_rel": "self" if row["kv_len"] == row["seq_len"] else str(row["kv_len"])}
    threads = f" · {row['threads']} threads" if row.get("threads") else ""
    return f"{group_label(g)} · N={row['seq_len']}{threads}"


class CompareError(Exception):
    """Nothing to compare: a folder with no records, or one that cannot be read."""


def _by_key(path: Path) -> tuple[dict[tuple[Any, ...], dict[str, Any]], str]:
    try:
        frame = load_results(path)
    except (OSError, ValueError) as exc:
        raise CompareError(f"{path}: {exc}") from None
    rows = records_of(frame)
    if not rows:
        raise CompareError(f"{path} holds no records: nothing to compare")
    machine = str(rows[0]["machine"]) if rows else path.name
    return {record_key(r): r for r in rows}, machine


def _suite(path: Path) -> tuple[str, str]:
    """``(name, hash)`` of the suite a run was started with (empty where unknown)."""
    suite: dict[str, Any] = (load_run(path).get("suite") or {}) if path.is_dir() or path.suffix == ".jsonl" else {}
    inner = suite.get("suite")
    name = suite.get("name") or (inner.get("name") if isinstance(inner, dict) else "")
    return str(name or ""), str(suite.get("hash") or "")


def _samples(row: dict[str, Any], name: str) -> list[float]:
    values = row.get(name)
    if isinstance(values, list | tuple | np.ndarray):
        return [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return []


def _probe_kind(label: str) -> str:
    """``matmul float32 n=512`` → ``matmul float32``; ``triad 12 MiB`` → ``triad``."""
    if label.startswith("matmul "):
        return label.rsplit(" n=", 1)[0]
    return label.split(" ", 1)[0]


def references(row: dict[str, Any]) -> dict[str, list[float]]:
    """A record's within-run references and their per-call cost, comparable across runs, in order
    of preference: the interleaved baseline's milliseconds (not for the baseline's own record),
    then the machine probe's milliseconds per unit of its work (when the record carries the work,
    else per call of that exact probe)."""
    out: dict[str, list[float]] = {}
    base_ms, baseline = _samples(row, "baseline_samples_ms"), str(row.get("baseline") or "")
    if base_ms and baseline and baseline != row.get("impl"):
        out[f"baseline {baseline}"] = base_ms
    probe_ms, label = _samples(row, "machine_probe_ms"), str(row.get("machine_probe") or "")
    if probe_ms and label:
        work = row.get("machine_probe_work")
        if isinstance(work, int | float) and work > 0:
            out[f"probe {_probe_kind(label)}"] = [ms / float(work) for ms in probe_ms]
        else:
            out[f"probe {label}"] = probe_ms
    return out


def _relative(own: list[float], reference: list[float]) -> list[float]:
    """Per-sample ratios impl / reference; paired when both lists have one sample per round."""
    if not own or not reference:
        return []
    if len(own) == len(reference):
        return [a / b for a, b in zip(own, reference, strict=True) if b > 0]
    mid = float(np.median(reference))
    return [a / mid for a in own] if mid > 0 else []


def _judge(ratio: float, p: float | None, alpha: float | None, limit: float) -> Verdict:
    beyond = ratio > limit or ratio < 1.0 / limit
    if not beyond:
        return "same"
    if alpha is None or p is None:
        return "uncertain"
    if p >= alpha:
        return "same"
    return "slower" if ratio > 1.0 else "faster"


def _relatives(base: dict[str, Any], new: dict[str, Any], limit: float) -> list[Relative]:
    """The pair's change against the first reference (see :func:`references`) both runs carry."""
    a, b = _samples(base, "samples_ms"), _samples(new, "samples_ms")
    refs_a, refs_b = references(base), references(new)
    out: list[Relative] = []
    for name in [n for n in refs_a if n in refs_b][:1]:
        ra, rb = _relative(a, refs_a[name]), _relative(b, refs_b[name])
        if not ra or not rb:
            continue
        ratio = float(np.median(rb)) / float(np.median(ra))
        alpha = choose_alpha(len(ra), len(rb))
        p = mann_whitney(ra, rb) if alpha is not None else None
        out.append(Relative(name, ratio, p, _judge(ratio, p, alpha, limit)))
    return out


def _probe_moved(relative: list[Relative], ratio: float, limit: float) -> bool:
    """Whether the pair's only reference is the machine probe and the probe itself moved beyond
    the threshold, either way. The probe is other work (a matrix product or a memory sweep of a
    fixed size): under load, a short or multi-threaded call can lose several times more, or less,
    than it does. Measured on this project's 2-core machine: two spinning processes slowed the
    probe ×1.5 and a 0.5 ms SDPA call ×3.1 in one run; the probe ×37-74 against kernels ×1.3-2 in
    another; and with a long run beside both runs, the probe ran 3× *faster* in the loaded run
    while the SDPA call ran ×1.5 slower. So a probe that moved says the machine changed, never
    by how much this pair should have."""
    if not relative or not relative[0].reference.startswith("probe"):
        return False
    moved = ratio / relative[0].ratio
    return moved > limit or moved < 1.0 / limit


def machine_load(row: dict[str, Any]) -> float | None:
    """The load a record was timed under (None when the record does not say)."""
    value = row.get("machine_load")
    return float(value) if isinstance(value, int | float) and math.isfinite(float(value)) else None


def _loaded(base: dict[str, Any], new: dict[str, Any]) -> str:
    """``"48% in NEW"`` where either run timed the pair under more than :data:`LOAD_LIMIT` of load."""
    said = [
        f"{load:.0%} in {which}"
        for which, row in (("BASE", base), ("NEW", new))
        if (load := machine_load(row)) is not None and load > LOAD_LIMIT
    ]
    return " and ".join(said)


def compare_pair(base: dict[str, Any], new: dict[str, Any], threshold_pct: float) -> PairComparison:
    """Compare one pair that is ok in both runs."""
    limit = 1.0 + threshold_pct / 100.0
    a, b = _samples(base, "samples_ms"), _samples(new, "samples_ms")
    base_ms = float(np.median(a)) if a else float(base["time_ms"])
    new_ms = float(np.median(b)) if b else float(new["time_ms"])
    ratio = new_ms / base_ms if base_ms > 0 else math.inf
    alpha = choose_alpha(len(a), len(b))
    p = mann_whitney(a, b) if alpha is not None else None
    verdict = _judge(ratio, p, alpha, limit)
    relative = _relatives(base, new, limit)
    note = ""
    if alpha is None and verdict == "uncertain":
        note = f"too few samples ({len(a)} and {len(b)}) for a significant test"
    disagree = [r for r in relative if r.verdict != verdict]
    if verdict in ("slower", "faster") and disagree:
        moved = "; ".join(
            f"the {r.reference} moved ×{ratio / r.ratio:.2f}, relative to it ×{r.ratio:.2f}" for r in disagree
        )
        opposite = "faster" if verdict == "slower" else "slower"
        if any(r.verdict == opposite for r in disagree):
            verdict = "uncertain"
            note = f"{moved}: the load struck the reference and the pair unevenly; rerun on a quiet machine"
        else:
            verdict = "same"
            note = f"{moved}: the machine, not the implementation"
    elif verdict in ("slower", "faster") and _probe_moved(relative, ratio, limit):
        r = relative[0]
        verdict = "uncertain"
        note = (
            f"the {r.reference} moved ×{ratio / r.ratio:.2f} and the pair ×{ratio:.2f}: the machine's load changed, "
            "and a probe of other work cannot say how much load slows this one; rerun on a quiet machine"
        )
    elif verdict == "same":
        moved_alone = [r for r in relative if r.verdict in ("slower", "faster")]
        if moved_alone:
            note = "; ".join(f"relative to the {r.reference} ×{r.ratio:.2f} ({r.verdict})" for r in moved_alone)
            note += ", but the absolute time did not move"
    if verdict in ("slower", "faster") and (loaded := _loaded(base, new)):
        verdict = "uncertain"
        note = (
            f"other processes took {loaded} of the cores' time while it was timed: under load a call and the"
            " reference timed beside it slow unevenly; rerun on a quiet machine"
        )
    return PairComparison(
        str(new["impl"]),
        case_name(new),
        int(new["seq_len"]),
        base_ms,
        new_ms,
        ratio,
        p,
        alpha,
        len(a),
        len(b),
        tuple(relative),
        verdict,
        note,
    )


def compare_runs(base: Path, new: Path, threshold_pct: float = 10.0, out: Path | None = None) -> CompareResult:
    """Compare every (case, implementation) of two runs; write compare.md/.html into ``out`` if given."""
    base_rows, base_machine = _by_key(Path(base))
    new_rows, new_machine = _by_key(Path(new))
    result = CompareResult(Path(base), Path(new), threshold_pct, machines=(base_machine, new_machine))
    (base_suite, base_hash), (new_suite, new_hash) = _suite(Path(base)), _suite(Path(new))
    result.suites = (base_suite, new_suite)
    if base_suite != new_suite or (base_hash and new_hash and base_hash != new_hash):
        what = (
            f"{base_suite or '?'} and {new_suite or '?'}"
            if base_suite != new_suite
            else f"two versions of {base_suite}"
        )
        result.warnings.append(f"the runs are of different suites ({what}): only the pairs they share are compared")
    for key, b in base_rows.items():
        n = new_rows.get(key)
        if n is None:
            result.only_base.append(_describe(b))
        elif b["status"] == Status.OK and n["status"] == Status.OK:
            result.pairs.append(compare_pair(b, n, threshold_pct))
        elif b["status"] != n["status"]:
            result.status_changed.append(
                {
                    **_describe(n),
                    "before": str(b["status"]),
                    "after": str(n["status"]),
                    "reason": str(n.get("reason") or b.get("reason") or ""),
                }
            )
    result.only_new = [_describe(n) for key, n in new_rows.items() if key not in base_rows]
    order = {"slower": 0, "faster": 1, "uncertain": 2, "same": 3}
    result.pairs.sort(key=lambda p: (order[p.verdict], p.impl, p.case.rsplit(" · N=", 1)[0], p.seq_len))
    if out is not None:
        write_compare(result, Path(out))
    return result


def _describe(row: dict[str, Any]) -> dict[str, str]:
    return {"impl": str(row["impl"]), "case": case_name(row), "status": str(row["status"])}


def write_compare(result: CompareResult, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    context = {
        "r": result,
        "alpha_strict": ALPHA_STRICT,
        "alpha_loose": ALPHA_LOOSE,
        "verdicts": ("slower", "faster", "uncertain", "same"),
        "case_keys": CASE_KEYS,
    }
    md = render("compare.md.j2", context, out / "compare.md")
    html = render("compare.html.j2", context, out / "compare.html")
    return md, html


def summary_lines(result: CompareResult) -> list[str]:
    counts = ", ".join(f"{len(result.verdict(v))} {v}" for v in ("slower", "faster", "same", "uncertain"))
    lines = [
        f"compare {result.base} -> {result.new} (threshold {result.threshold_pct:g}%, "
        f"Mann-Whitney U, alpha {ALPHA_STRICT} or {ALPHA_LOOSE} by sample count)",
        f"  {counts}; {len(result.only_base)} only in base, {len(result.only_new)} only in new, "
        f"{len(result.status_changed)} changed status",
    ]
    if result.machines[0] != result.machines[1]:
        lines.append(f"  note: different machines ({result.machines[0]} vs {result.machines[1]})")
    lines += [f"  warning: {w}" for w in result.warnings]
    for p in result.verdict("slower") + result.verdict("faster"):
        rel = "".join(f"; vs {r.reference} x{r.ratio:.2f}" for r in p.relative)
        lines.append(f"  {p.verdict:7s} {p.impl} [{p.case}]: x{p.ratio:.2f} (p={p.p_value:.2g}{rel})")
    for s in result.status_changed:
        lines.append(f"  status  {s['impl']} [{s['case']}]: {s['before']} -> {s['after']}")
    for s in result.vanished:
        lines.append(f"  gone    {s['impl']} [{s['case']}]: ok in BASE, no record in NEW")
    return lines


def default_out(base: Path, new: Path) -> Path:
    """A folder of its own for a comparison's files, beside the runs, never inside them."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"compare_{base.name}_vs_{new.name}_{stamp}"


def run_compare(base: Path, new: Path, threshold_pct: float, fail_on_regression: bool, out: Path | None) -> int:
    """Compare, print a summary, write compare.md/.html into ``out`` (default: a folder of its
    own); the exit code is 1 when ``fail_on_regression`` and a pair is significantly slower, left
    ``ok`` for any other status, or vanished. Raises :class:`CompareError` when there is nothing
    to compare."""
    target = Path(out) if out is not None else default_out(Path(base), Path(new))
    for run in (Path(base), Path(new)):
        folder = run if run.is_dir() else run.parent
        if target.resolve().is_relative_to(folder.resolve()):
            raise CompareError(
                f"--out {target} is inside {folder}, one of the runs compared: choose a folder of its own"
            )
    result = compare_runs(Path(base), Path(new), threshold_pct, target)
    for line in summary_lines(result):
        print(line)
    print(f"  wrote {target / 'compare.md'} and {target / 'compare.html'}")
    failed = result.failed()
    if fail_on_regression and failed:
        print(f"compare: --fail-on-regression: {len(failed)} pair(s) regressed")
        for line in failed:
            print(f"  {line}")
        return 1
    return 0
