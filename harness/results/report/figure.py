"""What every chart of a report shares: the canvas (data, output folder, colours) and saving.

Colours are one distinct hue per implementation, the same in every chart of a report (no
light/dark pairs of one hue): the baseline first, then the implementations in the order they
first appear. Line styles tell machines apart.

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
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

    def save(self, fig: Figure, name: str, title: str) -> Plot:
        png, svg = self.folder / f"{name}.png", self.folder / f"{name}.svg"
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
        png.write_bytes(buf.getvalue())
        fig.set_layout_engine("none")  # laid out once, for the PNG: the SVG keeps those positions
        fig.savefig(svg, format="svg", metadata={"Date": None})
        plt.close(fig)
        return Plot(name, title, png, svg, base64.b64encode(buf.getvalue()).decode("ascii"))


def safe(text: str) -> str:
    """Text for matplotlib: a ``$`` would start mathtext (and can fail to parse)."""
    return text.replace("$", r"\$")
