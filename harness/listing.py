"""``attnbench list``: the registered implementations, what each computes and whether it runs here.

Layer ``top``: may import any room.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from attnbench.plugins.registry import RegistryError, load_registry
from attnbench.usage import fail

#: How ``list`` says an implementation's FLOPs are counted (:data:`attnbench.case.work.COUNTED`).
FLOPS_COUNTED = {"softmax": "softmax pairs", "declared": "declared", "none": "none"}


def cmd_list(args: argparse.Namespace) -> int:
    try:
        registry = load_registry(args.plugin)
    except RegistryError as exc:
        return fail(str(exc))
    rows = [impl.declaration() for impl in registry.implementations()]
    aliases = registry.aliases()
    if args.json:
        for row in rows:
            row["aliases"] = sorted(a for a, n in aliases.items() if n == row["name"])
        print(json.dumps(rows, indent=2))
        return 0
    console = Console()
    console.print(implementation_table(rows, aliases, console.width))
    for row in rows:
        if not row["available"]:
            console.print(f"[bold]{row['name']}[/] unavailable: {row['reason']}", markup=True, highlight=False)
    return 0


def implementation_table(rows: list[dict[str, Any]], aliases: dict[str, str], width: int) -> Table:
    """The ``list`` table: names never wrap mid-word; narrow terminals drop the widest columns."""
    table = Table(title="attention implementations", width=min(width, 160) if width < 100 else None)
    table.add_column("name", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("computes", overflow="fold")
    wide = width >= 100
    if wide:
        table.add_column("devices")
        table.add_column("claims (time, memory)")
        table.add_column("FLOPs", no_wrap=True)
    table.add_column("available", no_wrap=True)
    for row in rows:
        kind = "exact" if row["exact"] else "approx."
        status = "[green]yes[/]" if row["available"] else "[red]no[/]"
        name = row["name"] + "".join(f"\n= {a}" for a, n in sorted(aliases.items()) if n == row["name"])
        computes = ", ".join(row["computes"]).replace("block-sparse", "blocks")
        cells = [name, kind, computes]
        if wide:
            growth = row["time_growth"], row["memory_growth"]
            claims = "–" if growth[0] is None else f"N^{growth[0]:g}, N^{growth[1]:g}"
            cells += [", ".join(row["devices"]), claims, FLOPS_COUNTED.get(row.get("work", ""), "–")]
        table.add_row(*cells, status)
    return table
