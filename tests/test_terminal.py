"""What a user sees in an 80-column terminal: the progress bar keeps its bar, counts and time
left; ``attnbench list`` wraps no name mid-word."""

from __future__ import annotations

import io

from rich.console import Console

from attnbench.cli import implementation_table
from attnbench.plugins.registry import load_registry
from attnbench.sweep.progress import SweepProgress


def test_the_progress_bar_keeps_its_bar_counts_and_time_left_at_80_columns() -> None:
    console = Console(width=80, force_terminal=True, record=True, file=io.StringIO(), color_system=None)
    progress = SweepProgress(120, console=console)
    assert progress._progress is not None
    label = "forward_backward bf16 cpu B8 H32/8 N16384x65536 D128 causal W4096 bigbird paged:16 ragged t2"
    for i in range(50):
        progress.left_s = 3725.0 - i  # the forecast's time left (attnbench.sweep.estimate)
        progress.start(label, "a_rather_long_plugin_implementation_name")
        progress.finish(label, {"status": ["ok", "unsupported", "oom"][i % 3], "impl": "x"})
    console.print(progress._progress.get_renderable())
    lines = [line for line in console.export_text().splitlines() if line.strip()]
    assert lines and all(len(line) <= 80 for line in lines)
    last = lines[-1]
    assert "━" in last  # the bar
    assert "50/120" in last
    assert last.rstrip().endswith("~61 min left")  # the forecast's time left (3676 s)
    assert "…" in last  # the pair in flight, cut short rather than pushing the rest off


def test_list_at_80_columns_wraps_no_name_mid_word() -> None:
    registry = load_registry()
    rows = [impl.declaration() for impl in registry.implementations()]
    console = Console(width=80, record=True, file=io.StringIO(), color_system=None)
    console.print(implementation_table(rows, registry.aliases(), 80))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    first_cells = [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│")]
    for row in rows:
        assert row["name"] in first_cells, row["name"]  # whole, on one line
