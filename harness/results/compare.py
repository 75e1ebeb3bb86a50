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
A pair with no interleaved baseline (the baseline's own pairs, a run without one) must also
move more than 25% to be called (``PROBE_ONLY_MARGIN_PCT`` in
:mod:`attnbench.results.regression`): an unchanged SDPA call moved ×1.17-1.18 between runs on
this project's VM while the probe beside it stayed within 10%, and samples from one run cannot
show that drift. A smaller move beyond the threshold is *uncertain*.

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

The verdict of a single pair is :mod:`attnbench.results.regression`'s; this module compares two
runs, writes the comparison and is the command.

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from attnbench.case.keys import CASE_KEYS, record_key
from attnbench.case.status import Status
from attnbench.results.read import load_results, load_run
from attnbench.results.regression import (
    ALPHA_LOOSE,
    ALPHA_STRICT,
    LOAD_LIMIT,
    PairComparison,
    Verdict,
    case_name,
    choose_alpha,
    compare_pair,
    mann_whitney,
    p_floor,
)
from attnbench.results.report.data import records_of
from attnbench.results.report.html import render


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
    for p in result.verdict("uncertain"):
        if p.loaded:  # a move the gate would have judged, but for the load: say why it did not
            lines.append(f"  uncertain {p.impl} [{p.case}]: x{p.ratio:.2f} ({p.note})")
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


__all__ = [
    "ALPHA_LOOSE", "ALPHA_STRICT", "LOAD_LIMIT", "CompareError", "CompareResult", "PairComparison", "case_name",
    "choose_alpha", "compare_pair", "compare_runs", "mann_whitney", "p_floor", "run_compare", "summary_lines",
]  # fmt: skip
