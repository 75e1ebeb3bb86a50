"""The report's charts (matplotlib, Agg backend), each written as PNG and SVG.

The HTML embeds the PNG as a base64 data URI, so the page works offline and requests nothing.
Colours are fixed per implementation across every chart; line styles tell machines apart.
Only ``ok`` records are drawn; an implementation that stopped (oom, timeout, crash) says where
in its legend entry.

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from attnbench.case.modes import MODES
from attnbench.case.status import BUDGET_FAILURES
from attnbench.results.report.data import AXIS_NAME, calibration_peak, group_order, records_of
from attnbench.results.report.figure import LINESTYLES, Canvas, Plot, plt, safe


class Painter(Canvas):
    """Draws the line, Pareto and bar charts of one report."""

    # -- lines against the sequence length ------------------------------------------------------
    def by_length(self, metric: str) -> list[Plot]:
        """One chart per case group with two or more lengths."""
        spec = METRICS[metric]
        plots: list[Plot] = []
        ok = self.data.ok.dropna(subset=[spec.column])
        for group in group_order(ok):
            sub = ok[ok["group"] == group]
            if sub["x"].nunique() < 2 or (spec.applies is not None and not spec.applies(sub)):
                continue
            fig, ax = plt.subplots(figsize=(8.4, 4.2), layout="constrained")
            for (impl, host), line in sub.groupby(["impl", "host"], sort=False):
                self._line(ax, line.sort_values("x"), str(impl), str(host), spec, str(group))
            if spec.reference_line is not None:
                spec.reference_line(self, ax, sub)
            _axes(ax, spec, sorted(sub["x"].unique()), AXIS_NAME[str(sub["axis"].iloc[0])])
            ax.set_title(safe(textwrap.fill(f"{spec.title} — {group}", 90)), fontsize=10)
            fig.legend(fontsize=8, loc="outside right upper", frameon=False)
            plots.append(self.save(fig, f"{metric}_{len(plots)}", f"{spec.title}: {group}"))
        return plots

    def _line(self, ax: Axes, line: pd.DataFrame, impl: str, host: str, spec: Metric, group: str) -> None:
        x = line["x"].astype(float).to_numpy()
        y = spec.values(line)
        style = LINESTYLES[self.hosts.index(host) % len(LINESTYLES)] if host in self.hosts else "-"
        label = f"{impl} (baseline)" if impl == self.baseline else impl
        label = label if len(self.hosts) < 2 else f"{label} · {host}"
        stop = self._stopped(impl, host, group)
        if stop:
            label += f" ({stop})"
        kwargs: dict[str, Any] = {
            "color": self.colors.get(impl),
            "linestyle": style,
            "marker": "o",
            "ms": 4,
            "label": safe(label),
            "lw": 2.2 if impl == self.baseline else 1.5,
        }
        if spec.column == "time_ms" and line["time_q1_ms"].notna().all():
            lo = y - line["time_q1_ms"].astype(float).to_numpy()
            hi = line["time_q3_ms"].astype(float).to_numpy() - y
            ax.errorbar(x, y, yerr=np.clip([lo, hi], 0, None), capsize=2, **kwargs)
        else:
            ax.plot(x, y, **kwargs)

    def _stopped(self, impl: str, host: str, group: str) -> str:
        rec = self.data.records
        bad = rec[
            (rec["impl"] == impl)
            & (rec["host"] == host)
            & (rec["group"] == group)
            & rec["status"].isin(BUDGET_FAILURES)
        ]
        if not len(bad):
            return ""
        first = bad.sort_values("x").iloc[0]
        return f"{first['status']} at {first['length']}"

    def peak_line(self, ax: Axes, sub: pd.DataFrame) -> None:
        """The measured matmul peak of each host in the chart (the records' own, else run.json's);
        with one host, a right-hand axis reads throughput as a fraction of it."""
        found: list[float] = []
        for host, mine in sub.groupby("host", sort=False):
            peaks = mine["peak_gflops"].astype(float).dropna()
            peak = float(peaks.median()) if len(peaks) else None
            if peak is None:
                run = next((r for r in self.data.runs if r.label == mine["machine"].iloc[0]), None)
                first = mine.iloc[0]
                peak = (
                    None
                    if run is None
                    else calibration_peak(run, str(first["device"]), str(first["dtype"]), int(first["threads"]))
                )
            if peak:
                index = self.hosts.index(host) if host in self.hosts else 0
                label = f"matmul peak {peak:.0f}" + (f" ({host})" if len(self.hosts) > 1 else "")
                ax.axhline(peak, color="0.4", lw=1, ls=LINESTYLES[index % len(LINESTYLES)], label=safe(label))
                found.append(peak)
        if len(found) == 1:
            top = found[0]
            right = ax.secondary_yaxis(
                "right", functions=(lambda g: np.asarray(g) / top, lambda f: np.asarray(f) * top)
            )
            right.set_ylabel("fraction of the matmul peak")

    def bandwidth_line(self, ax: Axes, sub: pd.DataFrame) -> None:
        """The memory-bandwidth ceiling each record was set against (a triad over as many bytes
        as the case moves, timed beside it): the roofline of a memory-bound case."""
        for i, (host, mine) in enumerate(sub.groupby("host", sort=False)):
            ceiling = mine.groupby("x")["peak_gbps"].median().dropna()
            if len(ceiling):
                label = "bandwidth ceiling (triad beside each case)" + (f" ({host})" if len(self.hosts) > 1 else "")
                ax.plot(
                    ceiling.index.astype(float), ceiling.to_numpy(dtype=float), color="0.4", lw=1.2,
                    ls=LINESTYLES[i % len(LINESTYLES)], label=safe(label),
                )  # fmt: skip

    def unity_line(self, ax: Axes, sub: pd.DataFrame) -> None:
        ax.axhline(1.0, color="0.4", lw=1, ls="--", label=safe(f"= {self.baseline or 'baseline'}"))

    # -- groups measured at one size -------------------------------------------------------------
    def bars(self) -> list[Plot]:
        """One chart per case group measured at a single length: time and peak memory per
        implementation as bars (the same colours as every other chart)."""
        from attnbench.results.report.summary import comparable

        plots: list[Plot] = []
        ok = self.data.ok
        for (host, group), sub in ok.groupby(["host", "group"], sort=False):
            if sub["x"].nunique() != 1:
                continue
            at = comparable(sub).sort_values("comparable_ms", kind="stable")
            names = [str(n) for n in at["impl"]]
            colours = [self.colors.get(n, "0.5") for n in names]
            fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 0.9 + 0.32 * len(names)), layout="constrained")
            left.barh(names, at["comparable_ms"].astype(float), color=colours)
            left.set_xlabel("time (ms, relative to the baseline beside it)")
            mem = at["peak_mem_bytes"].astype(float) / 2**20
            right.barh(names, mem.fillna(0.0), color=colours)
            right.set_xlabel("peak extra memory (MiB)")
            right.set_yticklabels([])
            for ax in (left, right):
                ax.invert_yaxis()
                ax.grid(True, axis="x", alpha=0.3)
            where = f" · {host}" if len(self.hosts) > 1 else ""
            title = f"{group} · {at['length'].iloc[0]}{where}"
            fig.suptitle(safe(textwrap.fill(title, 100)), fontsize=10)
            plots.append(self.save(fig, f"bars_{len(plots)}", f"Time and memory at one size: {title}"))
        return plots

    # -- speed against error ------------------------------------------------------------------
    def pareto(self) -> list[Plot]:
        """Per group with an approximation that ran: time against distance from full attention, at
        the largest sequence length where one ran."""
        ok = self.data.ok
        plots: list[Plot] = []
        for (host, group), sub in ok.groupby(["host", "group"], sort=True):
            approx = sub[(sub["exact"] == False) & sub["full_rel_err"].notna()]  # noqa: E712
            if not len(approx):
                continue
            n = int(approx["x"].max())
            at = sub[sub["x"] == n].copy()
            length = str(at["length"].iloc[0])
            at["distance"] = at["full_rel_err"].where(at["full_rel_err"].notna(), at["rel_err"]).astype(float)
            at = at.dropna(subset=["distance", "time_ms"])
            at["distance"] = at["distance"].clip(lower=1e-9)
            fig, ax = plt.subplots(figsize=(8.4, 4.2), layout="constrained")
            for row in records_of(at):
                marker = "o" if row["exact"] is not False else "D"
                ax.scatter(
                    row["distance"], row["time_ms"], color=self.colors.get(row["impl"]), marker=marker, s=50, zorder=3
                )
                ax.annotate(
                    safe(str(row["impl"])),
                    (row["distance"], row["time_ms"]),
                    fontsize=8,
                    xytext=(5, 4),
                    textcoords="offset points",
                )
            front = pareto_front(at["distance"].tolist(), at["time_ms"].astype(float).tolist())
            if len(front) > 1:
                fx, fy = zip(*front, strict=True)
                ax.plot(fx, fy, color="0.5", lw=1, ls="--", label="Pareto front", zorder=2)
                ax.legend(fontsize=8, frameon=False)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.margins(0.12)
            ax.set_xlabel("relative distance from full softmax attention (max|out−full| / max|full|)")
            ax.set_ylabel("median time (ms)")
            ax.grid(True, which="major", alpha=0.3)
            ax.set_title(
                safe(f"Speed against error at {length} — {group}" + (f" · {host}" if len(self.hosts) > 1 else "")),
                fontsize=10,
            )
            plots.append(self.save(fig, f"pareto_{len(plots)}", f"Speed against error, {length}: {group}"))
        return plots


def pareto_front(xs: list[float], ys: list[float]) -> list[tuple[float, float]]:
    """The points no other point beats on both lower x (error) and lower y (time), by increasing x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(zip(xs, ys, strict=True)):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


@dataclass(frozen=True)
class Metric:
    column: str
    title: str
    ylabel: str
    values: Callable[[pd.DataFrame], np.ndarray]
    log_y: bool = True
    reference_line: Callable[[Painter, Axes, pd.DataFrame], None] | None = None
    applies: Callable[[pd.DataFrame], bool] | None = None  # the groups it is drawn for (None: all)


def _col(name: str, scale: float = 1.0) -> Callable[[pd.DataFrame], np.ndarray]:
    return lambda df: df[name].astype(float).to_numpy() * scale


METRICS: dict[str, Metric] = {
    "time": Metric("time_ms", "Time", "median time (ms)", _col("time_ms")),
    "memory": Metric("peak_mem_bytes", "Peak memory", "peak extra memory (MiB)", _col("peak_mem_bytes", 2.0**-20)),
    "throughput": Metric("gflops", "Throughput", "GFLOP/s", _col("gflops"), False, Painter.peak_line),
    "speedup": Metric("speedup", "Speedup", "speedup vs baseline (×)", _col("speedup"), True, Painter.unity_line),
    "bandwidth": Metric(
        "gbps",
        "Achieved bandwidth",
        "GB/s (bytes moved / time)",
        _col("gbps"),
        False,
        Painter.bandwidth_line,
        lambda sub: bool(sub["mode"].map(lambda m: MODES[m].memory_bound if m in MODES else False).all()),
    ),
}


def _axes(ax: Axes, spec: Metric, sizes: list[int], xlabel: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(int(s)) for s in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    # a log axis needs a positive value (a memory figure of 0 bytes everywhere has none)
    positive = any((np.asarray(line.get_ydata(), dtype=float) > 0).any() for line in ax.get_lines())
    if spec.log_y and positive:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10))
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        low, high = ax.get_ylim()
        ax.yaxis.set_minor_formatter(plain if high / low < 10 else NullFormatter())
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(spec.ylabel)
    ax.grid(True, which="major", alpha=0.3)
