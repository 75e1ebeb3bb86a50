"""Heads and head-dim heatmaps: throughput where a suite swept the number of heads or the head dim.

Where both were swept together, one small grid per implementation (heads × head dim) with a
shared colour scale; where one was swept, one grid of implementations × that parameter. The
colour is GFLOP/s (ok records only); a cell that did not run ok is grey and names its status.

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import Normalize

from attnbench.case.keys import CASE_KEYS
from attnbench.case.status import Status
from attnbench.results.report.data import ReportData, impl_order, records_of
from attnbench.results.report.figure import Canvas, Plot, plt, safe

MAX_PER_KIND = 2
COVERAGE = 0.75  # the share of a heads × head-dim product a 2-D grid must fill
LABELS = {"heads": "heads (H)", "head_dim": "head dim (D)"}


def draw_heatmaps(painter: Canvas) -> list[Plot]:
    plots: list[Plot] = []
    covered: set[int] = set()
    for j, (title, grid) in enumerate(sweeps(painter.data, ("heads", "head_dim"))[:MAX_PER_KIND]):
        plots.append(_small_multiples(painter, grid, title, f"heatmap_heads_head_dim_{j}"))
        covered |= set(grid.index)
    for param in ("heads", "head_dim"):
        found = [(t, g) for t, g in sweeps(painter.data, (param,)) if not set(g.index) <= covered]
        for j, (title, grid) in enumerate(found[:MAX_PER_KIND]):
            plots.append(_by_impl(painter, grid, param, title, f"heatmap_{param}_{j}"))
    return plots


def sweeps(data: ReportData, params: tuple[str, ...]) -> list[tuple[str, pd.DataFrame]]:
    """Groups of records that differ only in ``params`` (and impl), each swept over two values or
    more (a 2-D grid filling most of its product), with something ok; largest first."""
    rec = data.records.assign(gqa=data.records["heads"] // data.records["kv_heads"])
    skip = set(params) | ({"kv_heads"} if "heads" in params else set())  # a heads sweep moves kv_heads
    others = [k for k in CASE_KEYS if k not in skip] + ["gqa"]
    found = []
    for _, sub in rec.groupby(["host", *others], sort=True, dropna=False):
        cells = sub[list(params)].drop_duplicates()
        full = math.prod(sub[p].nunique() for p in params)
        if any(sub[p].nunique() < 2 for p in params) or len(cells) < COVERAGE * full:
            continue  # a cross-shaped sweep (one parameter at a time) reads better as 1-D grids
        if not (sub["status"] == Status.OK).any():
            continue
        first = sub.iloc[0]
        what = " and ".join(LABELS[p].split(" (")[0] for p in params)
        host = f" · {first['host']}" if data.records["host"].nunique() > 1 else ""
        label = f"GFLOP/s by {what} · {first['length']} · {first['mode']} {first['dtype']} {first['device']}{host}"
        found.append((len(cells), int(first["x"]), label, sub))
    found.sort(key=lambda f: (-f[0], -f[1]))
    return [(label, sub) for _, _, label, sub in found]


def _cells(
    grid: pd.DataFrame, rows: list[object], cols: list[object], row_of: str, col_of: str
) -> tuple[np.ndarray, list[list[str]]]:
    z = np.full((len(rows), len(cols)), np.nan)
    text = [["" for _ in cols] for _ in rows]
    for row in records_of(grid):
        r, c = rows.index(row[row_of]), cols.index(row[col_of])
        if row["status"] == Status.OK and row["gflops"] is not None and not pd.isna(row["gflops"]):
            z[r, c] = float(row["gflops"])
            text[r][c] = f"{z[r, c]:.0f}"
        else:
            text[r][c] = str(row["status"])
    return z, text


def _paint(ax: Axes, z: np.ndarray, text: list[list[str]], norm: Normalize, fontsize: float) -> object:
    ax.set_facecolor("0.85")
    img = ax.imshow(np.ma.masked_invalid(z), cmap="viridis", norm=norm, aspect="auto")
    mid = (norm.vmin + norm.vmax) / 2 if norm.vmin is not None and norm.vmax is not None else 0.0
    for r, line in enumerate(text):
        for c, label in enumerate(line):
            dark = np.isfinite(z[r, c]) and z[r, c] < mid
            ax.text(c, r, safe(label), ha="center", va="center", fontsize=fontsize, color="white" if dark else "black")
    return img


def _norm(z: np.ndarray) -> Normalize:
    finite = z[np.isfinite(z)]
    return Normalize(float(finite.min()), float(finite.max())) if finite.size else Normalize(0.0, 1.0)


def _by_impl(painter: Canvas, grid: pd.DataFrame, param: str, title: str, name: str) -> Plot:
    """Implementations × one swept parameter."""
    swept = grid.groupby("impl")[param].nunique()
    if (swept >= 2).any():  # leave out implementations that ran at one value only
        grid = grid[grid["impl"].isin(swept[swept >= 2].index)]
    impls: list[object] = list(impl_order(grid, painter.baseline))
    values: list[object] = sorted(grid[param].unique())
    z, text = _cells(grid, impls, values, "impl", param)
    fig, ax = plt.subplots(figsize=(2.6 + 1.1 * len(values), 1.4 + 0.45 * len(impls)), layout="constrained")
    img = _paint(ax, z, text, _norm(z), 8)
    fig.colorbar(img, ax=ax, label="GFLOP/s")  # type: ignore[arg-type]
    ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set_yticks(range(len(impls)), [safe(str(i)) for i in impls])
    ax.set_xlabel(LABELS[param])
    ax.set_title(safe(title), fontsize=10)
    return painter.save(fig, name, title)


def _small_multiples(painter: Canvas, grid: pd.DataFrame, title: str, name: str) -> Plot:
    """One heads × head-dim grid per implementation that ran ok somewhere in it, one colour scale."""
    ran = grid[grid["status"] == Status.OK]["impl"].unique()
    impls = [i for i in impl_order(grid, painter.baseline) if i in set(ran)]
    heads: list[object] = sorted(grid["heads"].unique())
    dims: list[object] = sorted(grid["head_dim"].unique())
    grids = {impl: _cells(grid[grid["impl"] == impl], heads, dims, "heads", "head_dim") for impl in impls}
    norm = _norm(np.concatenate([z.ravel() for z, _ in grids.values()]))
    ncols = min(3, len(impls))
    nrows = math.ceil(len(impls) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(1.2 + 3.0 * ncols, 0.8 + (0.35 * len(heads) + 0.9) * nrows),
        layout="constrained",
        squeeze=False,
    )
    img = None
    for ax, impl in zip(axes.ravel(), impls, strict=False):
        z, text = grids[impl]
        img = _paint(ax, z, text, norm, 7)
        ax.set_xticks(range(len(dims)), [str(d) for d in dims], fontsize=8)
        ax.set_yticks(range(len(heads)), [str(h) for h in heads], fontsize=8)
        ax.set_title(safe(impl), fontsize=9)
        ax.set_xlabel(LABELS["head_dim"], fontsize=8)
        ax.set_ylabel(LABELS["heads"], fontsize=8)
    for ax in axes.ravel()[len(impls) :]:
        ax.set_visible(False)
    if img is not None:
        fig.colorbar(img, ax=axes, label="GFLOP/s", shrink=0.8)  # type: ignore[arg-type]
    fig.suptitle(safe(title), fontsize=10)
    return painter.save(fig, name, title)
