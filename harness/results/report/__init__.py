"""``attnbench report DIR...``: one report over one or more result folders.

Writes into ``out`` (default: the first folder) ``report.md``, ``report.html`` (one offline file,
plots embedded as base64 PNG), ``tables/*.csv`` and ``plots/*.png`` / ``*.svg``. The modules:
:mod:`~attnbench.results.report.data` loads and labels, :mod:`~attnbench.results.report.tables` and
:mod:`~attnbench.results.report.fit` compute, :mod:`~attnbench.results.report.plots` draws,
:mod:`~attnbench.results.report.html` renders the templates in ``templates/``.

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from attnbench.case.status import STATUSES, Status, status_css
from attnbench.results.report import fidelity, ratios, summary, tables
from attnbench.results.report.answer import answers
from attnbench.results.report.data import ReportData, baseline_name, load_data, records_of, suite_of
from attnbench.results.report.figure import Plot
from attnbench.results.report.findings import library_findings
from attnbench.results.report.fit import FLAG_MARGIN, MIN_POINTS, scaling_table
from attnbench.results.report.heatmaps import draw_heatmaps
from attnbench.results.report.html import render
from attnbench.results.report.plots import Painter
from attnbench.sweep import cost

__all__ = ["STATUS_MEANING", "write_report"]

STATUS_MEANING: dict[str, str] = {s.value: s.meaning for s in Status}


def write_report(dirs: list[Path], out: Path | None = None) -> Path:
    """Write the report for ``dirs`` into ``out`` (default: the first folder); returns report.html's path."""
    paths = [Path(d) for d in dirs]
    if not paths:
        raise ValueError("report: give at least one result folder")
    target = Path(out) if out is not None else (paths[0] if paths[0].is_dir() else paths[0].parent)
    target.mkdir(parents=True, exist_ok=True)
    data = load_data(paths)
    context = build_context(data, target)
    render("report.md.j2", {**context, "plot_path": _relative_plot(target)}, target / "report.md")
    return render("report.html.j2", context, target / "report.html")


def build_context(data: ReportData, target: Path) -> dict[str, Any]:
    """Compute every table and chart, write the CSVs and plots, and return what the templates show."""
    baseline = baseline_name(data)
    fits = scaling_table(data.records, data.declarations, {run.label: run.pairs for run in data.runs})
    frames = {
        "summary": summary.summary(data),
        "machines": tables.machines(data),
        "status": tables.status_csv(data),
        "failures": tables.failures(data, baseline),
        "timings": tables.timings(data),
        "accuracy": tables.accuracy(data),
        "scaling": fits,
        "records": tables.records_csv(data),
    }
    findings = library_findings(data)
    if len(findings):
        frames["library_findings"] = findings
    fidelity_table = fidelity.table(data)
    if len(fidelity_table):
        frames["fidelity"] = fidelity_table
    declared = ratios.declared(data)
    if declared:
        frames["ratios"] = ratios.table(declared)
    across = tables.cross_machine(data)
    if len(across):
        frames["machines_compared"] = across
    csvs = tables.write_csvs(frames, target / "tables")
    plots = draw(data, target / "plots", baseline)
    return {
        "title": "attnbench report",
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "baseline": baseline,
        "suites": sorted({str(suite_of(r.info).get("name", "")) for r in data.runs} - {""}),
        "machines": _rows(frames["machines"]),
        "costs": [f"{run.label}: {cost.words(cost.total(run.info['cost']))}" for run in data.runs if run.info.get("cost")],
        "summary": _grouped(frames["summary"]),
        "answers": answers(frames["summary"], bool(data.records["host"].nunique() > 1) if len(data.records) else False),
        "notes": notes(data, fits),
        "status": tables.status_matrix(data, baseline),
        "status_meaning": STATUS_MEANING,
        "status_css": status_css(),
        "statuses": STATUSES,
        "failures": _rows(frames["failures"]),
        "timings": _rows(frames["timings"]),
        "accuracy": _rows(frames["accuracy"]),
        "accuracy_summary": _rows(tables.accuracy_summary(data)),
        "check_notes": _rows(tables.check_notes(data)),
        "profiles": _rows(tables.profiles(data)),
        "library_findings": _rows(findings),
        "fits": _rows(fits),
        "ratios": ratios.context(declared),
        "flag_margin": FLAG_MARGIN,
        "min_points": MIN_POINTS,
        "plots": plots,
        "across": {"columns": list(across.columns), "rows": records_of(across)} if len(across) else None,
        "files": [p.relative_to(target).as_posix() for p in csvs],
        "has_approx": bool(frames["summary"]["approximation"].notna().any()),
        "has_special": bool(frames["summary"]["special_fastest"].notna().any()),
        "fidelity": {
            "columns": list(fidelity_table.columns) if len(fidelity_table) else [],
            "rows": _rows(fidelity_table),
            "words": fidelity.in_words(data),
        },
        "several_hosts": data.records["host"].nunique() > 1 if len(data.records) else False,
    }


def draw(data: ReportData, folder: Path, baseline: str) -> dict[str, list[Plot]]:
    if not len(data.records):
        empty = ("time", "memory", "throughput", "speedup", "bandwidth", "bars", "pareto", "heatmaps")
        return {k: [] for k in (*empty, "curves", "maps", "toy", "fidelity_pareto")}
    painter = Painter(data, folder, baseline)
    plots = {metric: painter.by_length(metric) for metric in ("time", "memory", "throughput", "speedup", "bandwidth")}
    plots["bars"] = painter.bars()
    plots["pareto"] = painter.pareto()
    plots["heatmaps"] = draw_heatmaps(painter)
    drawn = fidelity.draw(painter)
    plots.update(curves=drawn["curves"], maps=drawn["maps"], toy=drawn["toy"], fidelity_pareto=drawn["pareto"])
    return plots


def notes(data: ReportData, fits: pd.DataFrame) -> list[str]:
    """The findings worth reading before the tables: generated data, flagged slopes, failures,
    unstable timings."""
    out = [
        f"{run.label} holds generated data ({run.info.get('source') or 'not a measurement'}):"
        " no figure of it was measured."
        for run in data.runs
        if run.info.get("generated")
    ]
    for row in records_of(fits):
        for what in ("time", "memory"):
            if row[f"{what}_flag"]:
                low, high, claim = row[f"{what}_ci_low"], row[f"{what}_ci_high"], row[f"{what}_claim"]
                if low <= claim <= high:
                    continue  # the interval includes the claim: the scaling table says so, the summary does not
                out.append(
                    f"{row['impl']} ({row['group']}, {row['machine']}): {what} grows as "
                    f"N^{row[f'{what}_slope']:.2f} (95% CI {low:.2f}–{high:.2f}) but claims N^{claim:g}."
                )
    counts = data.records["status"].value_counts()
    failed = ", ".join(f"{int(counts[s])} {s}" for s in STATUSES if s != Status.OK and counts.get(s, 0))
    if failed:
        out.append(f"Not every pair ran: {failed} (see the status matrix).")
    unstable = int((data.ok["unstable"] == True).sum())  # noqa: E712
    if unstable:
        out.append(f"{unstable} timing(s) were unstable (IQR ≥ 10% of the median); treat them with care.")
    return out


def _rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    if not len(frame):
        return []
    return [{k: (None if _isna(v) else v) for k, v in row.items()} for row in records_of(frame)]


def _isna(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _grouped(summary: pd.DataFrame) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for (host, group), sub in summary.groupby(["host", "group"], sort=False):
        groups.append({"host": host, "group": group, "rows": _rows(sub)})
    return groups


def _relative_plot(target: Path) -> Any:
    def path(plot: Plot) -> str:
        return plot.png.relative_to(target).as_posix()

    return path
