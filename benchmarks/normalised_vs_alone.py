"""Does the summary's normalised time say what an implementation takes when it runs alone?

The summary ranks a case's implementations by ``comparable_ms``: each one's median relative to the
baseline timed interleaved beside it, times the baseline's median over the case
(:func:`attnbench.results.report.summary.comparable`). This script runs a suite twice, as the
command line does: once as written (every pair interleaved with its baseline), once with the
baseline removed (every implementation timed alone), in that order, or the other way round with
``--alone-first``. It prints each pair's normalised time beside its time alone and how many agree
within ``--within``. The machine's speed drifts between the two runs too (the probe timed beside
each case shows by how much), so a pair outside the bound with the probe moved as far is drift
between the runs, not the normalisation's error; the table shows both. The runs write no report
(``attnbench report FOLDER`` writes one) and skip the paired timings, which this does not read.

    python benchmarks/normalised_vs_alone.py quick --out /tmp/alone
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from attnbench.case.status import Status
from attnbench.results.report.data import load_data
from attnbench.results.report.summary import comparable
from attnbench.sweep.suite import SuiteError, resolve_suite_path


def alone_suite(source: Path, target: Path) -> Path:
    """A copy of the suite at ``source`` with its baseline removed (every grid's too)."""
    text = source.read_text(encoding="utf-8")
    table = tomllib.loads(text)
    if not table.get("suite", {}).get("baseline"):
        raise SystemExit(f"{source} has no baseline: its times are measured alone already")
    lines = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        lines.append('baseline = ""' if key == "baseline" else line)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def run(suite: Path | str, out: Path, only: str | None) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "attnbench",
        "run",
        str(suite),
        "--out",
        str(out),
        "--no-paired-timings",
        "--no-report",
    ]
    cmd += ["--only", only] if only else []
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


def probe_per_unit(record: Any) -> float | None:
    """The median time per unit of work of the machine probe timed beside a pair (None without)."""
    ms, work = record.get("machine_probe_ms"), record.get("machine_probe_work")
    if isinstance(ms, list) and ms and isinstance(work, int | float) and work > 0:
        return statistics.median(ms) / float(work)
    return None


def ok_rows(folder: Path) -> dict[tuple[str, str], Any]:
    frame = load_data([folder]).records
    return {(str(r["impl"]), str(r["case"])): r for _, r in frame[frame["status"] == Status.OK].iterrows()}


def pairs(interleaved: Path, alone: Path) -> list[dict[str, Any]]:
    """Each ok pair of the interleaved run beside the same pair run alone, with how far the probe
    beside it moved between the runs (alone ÷ interleaved, per unit of work)."""
    frame = load_data([interleaved]).records
    normalised: dict[tuple[str, str], float] = {}
    for _, sub in frame.groupby(["host", "group", "x"], sort=False):
        good = comparable(sub[sub["status"] == Status.OK])
        for _, row in good.iterrows():
            normalised[(str(row["impl"]), str(row["case"]))] = float(row["comparable_ms"])
    before, after = ok_rows(interleaved), ok_rows(alone)
    rows = []
    for key, norm in normalised.items():
        if key not in after:
            continue
        p0, p1 = probe_per_unit(before[key]), probe_per_unit(after[key])
        moved = p1 / p0 if p0 and p1 else None
        rows.append({"impl": key[0], "case": key[1], "normalised_ms": norm, "alone_ms": float(after[key]["time_ms"]),
                     "probe_moved": moved})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", nargs="?", default="quick", help="a suite name in suites/ or a TOML file")
    parser.add_argument("--out", type=Path, required=True, help="folder for the two runs")
    parser.add_argument("--only", help="comma-separated implementations (as attnbench run --only)")
    parser.add_argument("--within", type=float, default=0.10, help="the agreement asked for (default 0.10)")
    parser.add_argument("--alone-first", action="store_true", help="run the suite alone first")
    args = parser.parse_args(argv)
    try:
        source = resolve_suite_path(args.suite)
    except SuiteError as exc:
        raise SystemExit(str(exc)) from None
    args.out.mkdir(parents=True, exist_ok=True)
    plain = alone_suite(source, args.out / f"{source.stem}_alone.toml")
    order = [("alone", plain), ("interleaved", source)]
    if not args.alone_first:
        order.reverse()
    folders = {name: run(suite, args.out / name, args.only) for name, suite in order}
    rows = pairs(folders["interleaved"], folders["alone"])
    if not rows:
        raise SystemExit("no pair ran ok in both runs")
    print(f"\n{'implementation':<20} {'case':<46} {'normalised':>11} {'alone':>10} {'ratio':>6} {'probe':>6}")
    within = 0
    for row in sorted(rows, key=lambda r: (r["case"], r["impl"])):
        ratio = row["normalised_ms"] / row["alone_ms"]
        within += abs(ratio - 1) <= args.within
        probe = row.get("probe_moved")
        print(
            f"{row['impl']:<20} {row['case'][:46]:<46} {row['normalised_ms']:>9.3f}ms {row['alone_ms']:>8.3f}ms"
            f" {ratio:>6.3f} {probe if probe is None else format(probe, '.3f'):>6}"
        )
    print(f"\n{within} of {len(rows)} pairs: normalised time within {args.within:.0%} of the time alone")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
