"""Does the summary's normalised time say what an implementation takes when it runs alone?

The summary ranks a case's implementations by ``comparable_ms``: each one's median relative to the
baseline timed interleaved beside it, times the baseline's median over the case
(:func:`attnbench.results.report.summary.comparable`). This script runs a suite twice, as the
command line does: once as written (every pair interleaved with its baseline), once with the
baseline removed (every implementation timed alone), in that order, or the other way round with
``--alone-first``. It prints each pair's normalised time beside its time alone and how many agree
within ``--within``. The machine's speed drifts between the two runs too (the probe timed beside
each case shows by how much), so a pair outside the bound with the probe moved as far is drift
between the runs, not the normalisation's error; the table shows both. With ``--repeat K`` the two
runs alternate K times each (interleaved, alone, interleaved, alone, …) and each figure is the
median over its K runs, so that the drift between runs weighs on both alike; the table then also
shows how far the K runs alone spread (largest ÷ smallest): the same pair, the same code, timed
minutes apart. The runs write no report (``attnbench report FOLDER`` writes one) and skip the
paired timings, which this does not read.

    python benchmarks/normalised_vs_alone.py quick --out /tmp/alone [--repeat 3]
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
from attnbench.measure.figures import probe_ms_per_unit
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


def ok_rows(folder: Path) -> dict[tuple[str, str], Any]:
    frame = load_data([folder]).records
    return {(str(r["impl"]), str(r["case"])): r for _, r in frame[frame["status"] == Status.OK].iterrows()}


def normalised_times(folder: Path) -> dict[tuple[str, str], float]:
    """Each ok pair's normalised time (what the summary ranks by) in one interleaved run."""
    frame = load_data([folder]).records
    normalised: dict[tuple[str, str], float] = {}
    for _, sub in frame.groupby(["host", "group", "x"], sort=False):
        good = comparable(sub[sub["status"] == Status.OK])
        for _, row in good.iterrows():
            normalised[(str(row["impl"]), str(row["case"]))] = float(row["comparable_ms"])
    return normalised


def pairs(interleaved: list[Path], alone: list[Path]) -> list[dict[str, Any]]:
    """Each pair ok in every run, its normalised time beside its time alone (each the median over
    its runs), how far the probe beside it moved between them (alone ÷ interleaved, per unit of
    work, medians), and how far its time alone spread over the runs alone."""
    normalised = [normalised_times(f) for f in interleaved]
    before, after = [ok_rows(f) for f in interleaved], [ok_rows(f) for f in alone]
    rows = []
    for key in normalised[0]:
        if not all(key in n for n in normalised) or not all(key in a for a in after):
            continue
        alone_ms = [float(a[key]["time_ms"]) for a in after]
        p0 = [p for b in before if (p := probe_ms_per_unit(b[key]))]
        p1 = [p for a in after if (p := probe_ms_per_unit(a[key]))]
        moved = statistics.median(p1) / statistics.median(p0) if p0 and p1 else None
        rows.append({"impl": key[0], "case": key[1], "normalised_ms": statistics.median(n[key] for n in normalised),
                     "alone_ms": statistics.median(alone_ms), "alone_spread": max(alone_ms) / min(alone_ms),
                     "probe_moved": moved})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", nargs="?", default="quick", help="a suite name in suites/ or a TOML file")
    parser.add_argument("--out", type=Path, required=True, help="folder for the two runs")
    parser.add_argument("--only", help="comma-separated implementations (as attnbench run --only)")
    parser.add_argument("--within", type=float, default=0.10, help="the agreement asked for (default 0.10)")
    parser.add_argument("--alone-first", action="store_true", help="run the suite alone first")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, alternating (default 1)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        source = resolve_suite_path(args.suite)
    except SuiteError as exc:
        raise SystemExit(str(exc)) from None
    args.out.mkdir(parents=True, exist_ok=True)
    plain = alone_suite(source, args.out / f"{source.stem}_alone.toml")
    order = [("alone", plain), ("interleaved", source)]
    if not args.alone_first:
        order.reverse()
    folders: dict[str, list[Path]] = {"interleaved": [], "alone": []}
    for i in range(args.repeat):
        for name, suite in order:
            folder = args.out / (name if i == 0 else f"{name}-{i + 1}")
            folders[name].append(run(suite, folder, args.only))
    rows = pairs(folders["interleaved"], folders["alone"])
    if not rows:
        raise SystemExit("no pair ran ok in every run")
    spread = args.repeat > 1
    head = f"{'implementation':<20} {'case':<46} {'normalised':>11} {'alone':>10} {'ratio':>6} {'probe':>6}"
    print("\n" + head + (f" {'spread':>6}" if spread else ""))
    within = drift = 0
    for row in sorted(rows, key=lambda r: (r["case"], r["impl"])):
        ratio = row["normalised_ms"] / row["alone_ms"]
        within += abs(ratio - 1) <= args.within
        drift += abs(ratio - 1) > args.within and max(ratio, 1 / ratio) <= row["alone_spread"]
        probe = row.get("probe_moved")
        print(
            f"{row['impl']:<20} {row['case'][:46]:<46} {row['normalised_ms']:>9.3f}ms {row['alone_ms']:>8.3f}ms"
            f" {ratio:>6.3f} {probe if probe is None else format(probe, '.3f'):>6}"
            + (f" {row['alone_spread']:>6.3f}" if spread else "")
        )
    print(f"\n{within} of {len(rows)} pairs: normalised time within {args.within:.0%} of the time alone")
    if spread:
        print(f"{drift} of the others differ by no more than their own time alone spread over {args.repeat} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
