"""The report's Fidelity section: where each implementation attends, on the probes.

* **retrieval curves** — for the ``retrieval`` probe, the share of the target recovered against
  the target's distance (log axis), one line per implementation, one chart per length; softmax
  attention at 1, chance (uniform attention) near 0;
* **probe × implementation** — the mean share recovered on every probe, at the longest length
  each ran;
* **maps** — the effective attention matrices recovered from outputs (short cases), one row of
  panels per implementation and one column per probe, softmax attention's own first;
* **the toy sentence** — where each implementation's "it" looks, word by word;
* **time against retrieval** — the Pareto chart of speed against the share recovered;
* **in words** — "retrieves up to distance X at N" for each implementation.

Records of one probe and length are compared whatever their window or layout: a sliding window
and full attention answer the same question on the same inputs.

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

import textwrap
from typing import Any, cast

import numpy as np
import pandas as pd

from attnbench.case.probes import KINDS, TOY, TOY_QUERY, TOY_TARGET
from attnbench.measure.fidelity import decode
from attnbench.results.report.data import ReportData, records_of
from attnbench.results.report.figure import Canvas, Plot, plt, safe

#: Case fields that define a fidelity comparison (window and layout are what is compared).
KEYS = ("host", "mode", "dtype", "device", "batch", "heads", "kv_heads", "head_dim", "causal", "probe")
#: A distance counts as retrieved when this share of the target is recovered there.
RETRIEVED = 0.9


def probed(data: ReportData) -> pd.DataFrame:
    """The ok records on a probe, each labelled by what it computes (its window or layout)."""
    rec = data.ok
    if "probe" not in rec or not len(rec):
        return rec.iloc[0:0]
    out = rec[(rec["probe"].fillna("random") != "random") & rec["recovered"].notna()].copy()
    out["who"] = [label(r) for r in records_of(out)]
    out["kind"] = out["probe"].astype(str).str.split(":").str[0]
    return out


def label(row: dict[str, Any]) -> str:
    """``sliding_window (W256)``: an implementation with what restricts it."""
    bits = []
    if row.get("window"):
        bits.append(f"W{row['window']}")
    layout = str(row.get("layout") or "dense")
    if layout != "dense":
        bits.append(layout.split(":")[0])
    return f"{row['impl']}" + (f" ({', '.join(bits)})" if bits else "")


def reach(curve: list[list[float]]) -> float | None:
    """The largest distance up to which every bin recovers at least :data:`RETRIEVED`."""
    found = None
    for _lo, hi, share, _rows in sorted(curve or []):
        if share < RETRIEVED:
            break
        found = hi - 1
    return found


def table(data: ReportData) -> pd.DataFrame:
    """Mean share recovered, implementation × probe, at the longest length each ran."""
    rec = probed(data)
    if not len(rec):
        return pd.DataFrame()
    longest = rec.sort_values("seq_len").groupby(["host", "who", "kind"], sort=False).tail(1)
    wide = longest.pivot_table(index=["host", "who"], columns="kind", values="recovered", aggfunc="first")
    order = [k for k in KINDS if k in wide.columns]
    return wide[order].reset_index()


def in_words(data: ReportData) -> list[str]:
    """For each implementation on the retrieval probe: how far it retrieves at each length."""
    rec = probed(data)
    if not len(rec):
        return []
    rec = rec[rec["kind"] == "retrieval"]
    lines = []
    for (host, who), sub in rec.groupby(["host", "who"], sort=False):
        parts = []
        for row in records_of(sub.sort_values("seq_len")):
            far = reach(row["retrieval_curve"])
            n = int(row["seq_len"])
            parts.append(f"up to distance {int(far)} at N={n}" if far is not None else f"not at distance 1 at N={n}")
        where = f" ({host})" if rec["host"].nunique() > 1 else ""
        lines.append(f"{who}{where} retrieves " + "; ".join(parts) + ".")
    return lines


def draw(canvas: Canvas) -> dict[str, list[Plot]]:
    rec = probed(canvas.data)
    if not len(rec):
        return {"curves": [], "maps": [], "toy": [], "pareto": []}
    return {
        "curves": _curves(canvas, rec),
        "maps": _maps(canvas, rec),
        "toy": _toy(canvas, rec),
        "pareto": _pareto(canvas, rec),
    }


def _by_length(frame: pd.DataFrame, keys: tuple[str, ...]) -> list[tuple[dict[str, Any], int, pd.DataFrame]]:
    """``(case fields, length, records)`` for each comparison of ``frame``, in order."""
    out = []
    for values, sub in frame.groupby([*keys, "seq_len"], sort=True):
        parts = cast(tuple[Any, ...], values)
        out.append((dict(zip(keys, parts[:-1], strict=True)), int(parts[-1]), sub))
    return out


def _colour(canvas: Canvas, impl: str) -> Any:
    return canvas.colors.get(impl, "0.5")


def _curves(canvas: Canvas, rec: pd.DataFrame) -> list[Plot]:
    plots: list[Plot] = []
    for group, n, sub in _by_length(rec[rec["kind"] == "retrieval"], KEYS):
        fig, ax = plt.subplots(figsize=(8.4, 4.2), layout="constrained")
        for row in records_of(sub):
            curve = np.array(row["retrieval_curve"] or [], dtype=float)
            if not len(curve):
                continue
            mid = np.sqrt(curve[:, 0] * (curve[:, 1] - 1).clip(min=1))
            ax.plot(mid, curve[:, 2], marker="o", ms=4, color=_colour(canvas, str(row["impl"])), label=safe(row["who"]))
        floor = float(sub["uniform_recovered"].median())
        ax.axhline(1.0, color="0.3", lw=1, ls="--", label="softmax attention")
        ax.axhline(floor, color="0.6", lw=1, ls=":", label=f"chance (uniform attention, {floor:.2f})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("distance of the target key (tokens back)")
        ax.set_ylabel("share of the target recovered")
        ax.grid(True, alpha=0.3)
        title = f"Retrieval at N={n} — {group['mode']} {group['dtype']} H{group['heads']} D{group['head_dim']}"
        ax.set_title(safe(title), fontsize=10)
        fig.legend(fontsize=8, loc="outside right upper", frameon=False)
        plots.append(canvas.save(fig, f"retrieval_{len(plots)}", f"Retrieval against distance, N={n}"))
    return plots


def _maps(canvas: Canvas, rec: pd.DataFrame) -> list[Plot]:
    have = rec[(rec["attention_map"].fillna("") != "") & (rec["kind"] != "toy")]
    plots: list[Plot] = []
    for _group, n, sub in _by_length(have, KEYS[:-1]):
        kinds = [k for k in KINDS if k in set(sub["kind"])]
        whos = list(dict.fromkeys(sub.sort_values("impl", key=lambda s: s.map(_rank(canvas)))["who"]))
        rows = ["softmax attention", *whos]
        fig, axes = plt.subplots(
            len(rows), len(kinds), figsize=(1.6 + 1.7 * len(kinds), 0.6 + 1.7 * len(rows)), squeeze=False,
            layout="constrained",
        )  # fmt: skip
        size = n, int(sub["kv_len"].iloc[0])
        for c, kind in enumerate(kinds):
            mine = sub[sub["kind"] == kind]
            for r, who in enumerate(rows):
                ax = axes[r][c]
                ax.set_xticks([])
                ax.set_yticks([])
                pick = mine if who == "softmax attention" else mine[mine["who"] == who]
                if not len(pick):
                    ax.set_facecolor("0.92")
                else:
                    text = pick["softmax_map"].iloc[0] if who == "softmax attention" else pick["attention_map"].iloc[0]
                    ax.imshow(np.sqrt(np.clip(decode(text, *size), 0, None)), cmap="magma", vmin=0, vmax=1)
                if r == 0:
                    ax.set_title(kind.replace("_", " "), fontsize=9)
                if c == 0:
                    ax.set_ylabel(safe(textwrap.fill(who, 18)), fontsize=8)
        fig.suptitle(safe(f"Where each row looks, N={size[0]} (√weight; query rows down, keys across)"), fontsize=10)
        plots.append(canvas.save(fig, f"maps_{len(plots)}", f"Attention maps recovered from outputs, N={size[0]}"))
    return plots


def _rank(canvas: Canvas) -> dict[str, int]:
    order = list(canvas.colors)
    return {name: i for i, name in enumerate(order)}


def _toy(canvas: Canvas, rec: pd.DataFrame) -> list[Plot]:
    toy = rec[(rec["kind"] == "toy") & (rec["attention_map"].fillna("") != "")]
    plots: list[Plot] = []
    for _group, n, sub in _by_length(toy, KEYS[:-1]):
        size = n, int(sub["kv_len"].iloc[0])
        words = [*TOY, *["·"] * max(0, size[1] - len(TOY))][: size[1]]
        rows = [("softmax attention", sub["softmax_map"].iloc[0], "0.25")]
        rows += [(r["who"], r["attention_map"], _colour(canvas, str(r["impl"]))) for r in records_of(sub)]
        fig, axes = plt.subplots(len(rows), 1, figsize=(8.4, 0.4 + 1.05 * len(rows)), sharex=True, layout="constrained")
        axes = np.atleast_1d(axes)
        for ax, (who, text, colour) in zip(axes, rows, strict=True):
            weights = decode(text, *size)[TOY_QUERY]  # the row of "it"
            bars = ax.bar(range(size[1]), weights, color=colour)
            bars[TOY_TARGET].set_edgecolor("black")
            bars[TOY_TARGET].set_linewidth(1.5)
            ax.set_ylim(0, 1)
            ax.set_ylabel(safe(textwrap.fill(who, 16)), fontsize=8, rotation=0, ha="right", va="center")
            ax.set_yticks([])
        axes[-1].set_xticks(range(size[1]), [safe(w) for w in words], rotation=30, fontsize=9)
        fig.suptitle('Where "it" looks: its attention over the sentence ("cat" outlined)', fontsize=10)
        plots.append(canvas.save(fig, f"toy_{len(plots)}", 'Where each implementation\'s "it" looks'))
    return plots


def _pareto(canvas: Canvas, rec: pd.DataFrame) -> list[Plot]:
    plots: list[Plot] = []
    for _group, n, sub in _by_length(rec[rec["kind"] == "retrieval"], KEYS):
        if sub["time_ms"].isna().all() or len(sub) < 2:
            continue
        fig, ax = plt.subplots(figsize=(8.4, 4.2), layout="constrained")
        for row in records_of(sub):
            x, y = float(row["recovered"]), float(row["time_ms"])
            ax.scatter(x, y, color=_colour(canvas, str(row["impl"])), s=50, zorder=3)
            ax.annotate(safe(row["who"]), (x, y), fontsize=8, xytext=(5, 4), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xlabel("share of the target recovered (retrieval probe, all distances)")
        ax.set_ylabel("median time (ms)")
        ax.grid(True, alpha=0.3)
        ax.set_title(safe(f"Time against retrieval at N={n}: right and low is better"), fontsize=10)
        plots.append(canvas.save(fig, f"fidelity_pareto_{len(plots)}", f"Time against retrieval, N={n}"))
    return plots
