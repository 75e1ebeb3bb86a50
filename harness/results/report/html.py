"""Rendering with Jinja2: the HTML with autoescaping on, the Markdown with its own cell escaping.

Names, reasons and error messages come from plugins; in HTML they pass through Jinja2's
autoescape (a plugin named ``<script>…`` shows as text), in Markdown through :func:`md_cell`,
which also escapes ``<`` and ``>`` because Markdown viewers render raw HTML.

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES = Path(__file__).parent / "templates"


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return isinstance(value, float) and math.isnan(value)
    except TypeError:
        return False


def fmt_num(value: Any, digits: int = 3) -> str:
    """A number to ``digits`` significant figures; "–" when missing."""
    if _missing(value):
        return "–"
    v = float(value)
    if v == 0:
        return "0"
    if abs(v) >= 10**digits:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def fmt_ms(value: Any) -> str:
    return "–" if _missing(value) else f"{fmt_num(value)} ms"


def fmt_bytes(value: Any) -> str:
    if _missing(value):
        return "–"
    v = float(value)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.0f} B"


def fmt_x(value: Any) -> str:
    return "–" if _missing(value) else f"{float(value):.2f}×"


def fmt_pct(value: Any) -> str:
    return "–" if _missing(value) else f"{100 * float(value):.0f}%"


def fmt_err(value: Any) -> str:
    return "–" if _missing(value) else f"{float(value):.2e}"


def fmt_claim(value: Any) -> str:
    return "–" if _missing(value) else f"N^{float(value):g}"


def md_cell(value: Any) -> str:
    """Text safe inside a Markdown table cell: no pipes, no raw HTML, one line."""
    text = "" if value is None else str(value)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return " ".join(text.split())


FILTERS = {
    "num": fmt_num,
    "ms": fmt_ms,
    "bytes": fmt_bytes,
    "x": fmt_x,
    "pct": fmt_pct,
    "err": fmt_err,
    "claim": fmt_claim,
    "missing": _missing,
}


def environment(markdown: bool = False) -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=not markdown,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(FILTERS)
    env.filters["md"] = md_cell
    env.tests["missing"] = _missing
    return env


def render(template: str, context: dict[str, Any], out: Path) -> Path:
    """Render ``templates/<template>`` into ``out`` (Markdown templates end in ``.md.j2``)."""
    env = environment(markdown=template.endswith(".md.j2"))
    out.write_text(env.get_template(template).render(**context), encoding="utf-8")
    return out
