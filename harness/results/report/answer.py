"""The answer a report leads with: which implementation to use for each case group, in one line.

Built from the summary table (:func:`attnbench.results.report.summary.summary`): per group, the fastest
exact implementation at each length, consecutive lengths with the same winner joined, its margin
over the next fastest; the specialist for a windowed or block-sparse pattern beside it; and each
length the summary had to rank by raw medians, with the reason. Nothing here is measured anew.

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from attnbench.results.report.data import records_of


def _margin(row: dict[str, Any], prefix: str = "") -> float | None:
    """How many times faster than the next fastest (None without one): for the specialist, than
    the fastest general implementation."""
    if prefix:
        versus = row.get("special_vs_fastest")
        return float(versus) if isinstance(versus, int | float) and versus == versus else None
    text = str(row.get("runner_up") or "")
    if "(" not in text or "×" not in text:
        return None
    try:
        return float(text.rsplit("(", 1)[1].split("×", 1)[0])
    except ValueError:
        return None


def _spans(rows: list[dict[str, Any]], key: str, prefix: str = "") -> list[str]:
    """``"sdpa at N=512–2048 (1.21–1.40× the next)"``: runs of lengths with the same winner."""
    out: list[str] = []
    run: list[dict[str, Any]] = []

    def flush() -> None:
        if not run:
            return
        lengths = [str(r["length"]) for r in run]
        where = lengths[0] if len(lengths) == 1 else f"{lengths[0]}–{lengths[-1].split('=')[-1]}"
        margins = [m for r in run if (m := _margin(r, prefix)) is not None]
        ahead = ""
        if margins:
            low, high = min(margins), max(margins)
            than = "the fastest general one" if prefix else "the next"
            ahead = f" ({low:.2f}× {than})" if high - low < 0.005 else f" ({low:.2f}–{high:.2f}× {than})"
        out.append(f"{run[0][key]} at {where}{ahead}")
        run.clear()

    for row in rows:
        winner = row.get(key)
        if not isinstance(winner, str) or not winner:
            flush()
            continue
        if run and run[-1][key] != winner:
            flush()
        run.append(row)
    flush()
    return out


def answers(summary: pd.DataFrame, several_hosts: bool = False) -> list[str]:
    """One line per case group (and host): what to use, by length."""
    lines: list[str] = []
    if not len(summary):
        return lines
    for (host, group), sub in summary.groupby(["host", "group"], sort=False):
        rows = records_of(sub)
        where = f"{group}" + (f" · {host}" if several_hosts else "")
        general = _spans(rows, "fastest")
        special = _spans(rows, "special_fastest", "special_")
        if not general and not special:
            lines.append(f"{where}: no exact implementation ran ok.")
            continue
        text = f"{where}: " + ("; ".join(general) if general else "no general implementation ran ok")
        if special:
            text += "; for this pattern only: " + "; ".join(special)
        raw = [r for r in rows if r.get("ranked_by") == "median time" and r.get("ranked_why")]
        if raw:
            text += " (ranked by raw medians at " + "; ".join(f"{r['length']}: {r['ranked_why']}" for r in raw) + ")"
        lines.append(text + ".")
    return lines
