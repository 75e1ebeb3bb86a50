"""What every chart of a report shares: the canvas (data, output folder, colours) and saving.

Colours are one distinct hue per implementation, the same in every chart of a report (no
light/dark pairs of one hue): the baseline first, then the implementations in the order they
first appear. Line styles tell machines apart.

Rendering a chart (laying it out, rasterising the PNG, writing the SVG) costs most of a report's
time, so each figure, once built, is pickled to a small pool of processes that render while the
next one is built (:meth:`Canvas.save`); :meth:`Canvas.finish` collects the PNGs. Where a pool
cannot start or a figure cannot be pickled, it is rendered here, with the same result.

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

import base64
import io
import multiprocessing
import os
import pickle
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: the report draws to files, never to a screen
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from attnbench.results.report.data import ReportData, impl_order

__all__ = ["LINESTYLES", "PALETTE", "Canvas", "Plot", "colours", "plt", "safe"]

LINESTYLES = ["-", "--", ":", "-."]
#: Distinct hues that read on white (after Sasha Trubetskoy's list of 20 distinct colours).
PALETTE = [
    "#4363d8", "#e6194b", "#3cb44b", "#f58231", "#911eb4", "#42a5b5", "#f032e6", "#9a6324",
    "#808000", "#000075", "#800000", "#469990", "#e0b000", "#7f7f7f", "#000000", "#a0522d",
]  # fmt: skip


@dataclass(frozen=True)
class Plot:
    """A chart written to ``plots/NAME.png`` and ``.svg``, with its PNG as base64 for the HTML."""

    name: str
    title: str
    png: Path
    svg: Path
    png_b64: str


def colours(names: list[str]) -> dict[str, str]:
    """One hue per name, in order (cycling, with a second line style beyond the palette)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


class Canvas:
    """The report's data, where its charts go, and the colour of each implementation."""

    def __init__(self, data: ReportData, folder: Path, baseline: str = "") -> None:
        self.data = data
        self.folder = folder
        self.baseline = baseline
        folder.mkdir(parents=True, exist_ok=True)
        self.colors = colours(impl_order(data.records, baseline)) if len(data.records) else {}
        self.hosts = list(dict.fromkeys(data.records["host"])) if len(data.records) else []
        self._pending: dict[str, Future[str]] = {}
        self._done: dict[str, str] = {}

    def save(self, fig: Figure, name: str, title: str) -> Plot:
        """Write ``fig`` to ``plots/NAME.png`` and ``.svg`` (in the pool where there is one); its
        ``png_b64`` is filled in by :meth:`finish`."""
        png, svg = self.folder / f"{name}.png", self.folder / f"{name}.svg"
        plot = Plot(name, title, png, svg, "")
        pool = self._renderers()
        try:
            payload = pickle.dumps(fig) if pool is not None else None
        except Exception:  # a figure that does not pickle is rendered here
            payload = None
        if pool is not None and payload is not None:
            self._pending[name] = pool.submit(_render_pickled, payload, png, svg)
        else:
            self._done[name] = _render(fig, png, svg)
        plt.close(fig)
        return plot

    def finish(self, plots: list[Plot]) -> list[Plot]:
        """The plots with their PNG as base64, once every render is done."""
        for name, future in list(self._pending.items()):
            self._done[name] = future.result()
            del self._pending[name]
        return [replace(p, png_b64=self._done[p.name]) for p in plots]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _renderers(self) -> Executor | None:
        if self._pool is None and not self._no_pool:
            workers = min(2, os.cpu_count() or 1)
            try:
                context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
                self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=context) if workers > 1 else None
            except (OSError, ValueError):
                self._pool = None
            self._no_pool = self._pool is None
        return self._pool

    _pool: Executor | None = None
    _no_pool: bool = False


def _render(fig: Figure, png: Path, svg: Path) -> str:
    """Save ``fig`` as PNG and SVG; the PNG as base64."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    png.write_bytes(buf.getvalue())
    fig.set_layout_engine("none")  # laid out once, for the PNG: the SVG keeps those positions
    fig.savefig(svg, format="svg", metadata={"Date": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _render_pickled(payload: bytes, png: Path, svg: Path) -> str:
    return _render(pickle.loads(payload), png, svg)


def safe(text: str) -> str:
    """Text for matplotlib: a ``$`` would start mathtext (and can fail to parse)."""
    return text.replace("$", r"\$")
