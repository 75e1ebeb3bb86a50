"""``attnbench profile NAME --case SPEC``: where one pair's call spends its time.

The call is profiled in a worker process, set up and called as a timed run sets up and calls it
(:mod:`attnbench.measure.profile`): the trace is written as Chrome trace JSON (``trace.json``:
open it in https://ui.perfetto.dev or chrome://tracing), with ``profile.json`` beside it, and
the terminal shows the operators that took the most self time with their share of the call.

Layer ``top``: may import any room.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from attnbench.usage import fail as _fail

#: How long the worker may take: set-up (a compilation), warm-up and the profiled calls.
PROFILE_TIMEOUT_S = 600.0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("profile", help="profile one implementation on one case: a Chrome trace and its top operators")
    p.add_argument("name", metavar="NAME", help="the implementation to profile")
    p.add_argument(
        "--case", default="", metavar="SPEC",
        help="the case, e.g. seq_len=4096,causal=true (other fields: batch 2, heads 4, head_dim 64, float32, cpu)",
    )  # fmt: skip
    p.add_argument("--plugin", action="append", default=[], metavar="FILE", help="load a plugin file (repeatable)")
    p.add_argument("--out", metavar="DIR", help="where to write trace.json and profile.json (default: results/…)")
    p.add_argument("--calls", type=int, default=5, metavar="N", help="profiled calls (default 5)")
    p.add_argument("--top", type=int, default=12, metavar="K", help="operators shown (default 12)")
    p.set_defaults(func=cmd_profile)


def cmd_profile(args: argparse.Namespace) -> int:
    from attnbench.measure.check import BASE, CaseSpecError, parse_case
    from attnbench.plugins.registry import RegistryError, load_registry
    from attnbench.sweep.folder import RESULTS_DIR
    from attnbench.sweep.workers import WorkerFailure, WorkerPool

    if args.calls < 1 or args.top < 1:
        return _fail("--calls and --top must be at least 1")
    try:
        registry = load_registry(args.plugin)
        name = registry.get(args.name).name
        fields = parse_case(args.case)
        from attnbench.case.problem import Problem

        problem = Problem(**{**BASE, **fields})
    except (RegistryError, CaseSpecError) as exc:
        return _fail(str(exc))
    except (TypeError, ValueError) as exc:
        return _fail(f"--case {args.case!r}: {exc}")
    slug = "".join(c if c.isalnum() else "-" for c in name)
    out = Path(args.out) if args.out else RESULTS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}_profile_{slug}"
    out.mkdir(parents=True, exist_ok=True)
    trace = (out / "trace.json").resolve()
    job = {"op": "profile", "impl": name, "case": problem.fields(), "trace": str(trace)}
    job |= {"calls": args.calls, "top": args.top}
    print(f"profiling {name} on {problem.label()}: {args.calls} calls in a worker", flush=True)
    pool = WorkerPool([str(Path(p).resolve()) for p in args.plugin])
    try:
        answer = pool.request(job, PROFILE_TIMEOUT_S)
    except WorkerFailure as exc:
        return _fail(f"the profile of {name} did not finish: {exc}")
    finally:
        pool.discard()
    summary = answer.get("profile") or {"failure": answer.get("fatal", "no answer from the worker")}
    if "failure" in summary:
        return _fail(str(summary["failure"]))
    (out / "profile.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    show(summary)
    return 0


def show(summary: dict[str, Any]) -> None:
    console = Console()
    call = summary["call_ms"]
    cuda = any("self_device_ms" in row for row in summary["top"])
    table = Table(title=f"{summary['impl']}: {summary['label']}: top operators by self time")
    table.add_column("operator", overflow="fold")
    table.add_column("calls", justify="right")
    table.add_column("self ms/call", justify="right")
    table.add_column("self share", justify="right")
    table.add_column("incl. share", justify="right")
    if cuda:
        table.add_column("device ms/call", justify="right")
    n = summary["calls"]
    for row in summary["top"]:
        cells = [row["name"], f"{row['count'] / n:g}", f"{row['self_ms'] / n:.3f}"]
        cells += [f"{row['self_share']:.1%}", f"{row['total_share']:.1%}"]
        cells += [f"{row.get('self_device_ms', 0.0) / n:.3f}"] if cuda else []
        table.add_row(*cells)
    console.print(table)
    if summary["top"]:
        first = summary["top"][0]
        console.print(
            f"most self time: {first['name']}, {first['self_share']:.1%} of the call"
            f" ({first['total_share']:.1%} with what it calls)",
            highlight=False,
        )
    overhead = summary["profiled_call_ms"] / call if call > 0 else float("nan")
    console.print(
        f"a call takes {call:.3f} ms ({summary['profiled_call_ms']:.3f} ms under the profiler, {overhead:.2f}x);"
        f" set-up {summary['setup_s']:.2f} s; {summary['threads_used']} threads",
        highlight=False,
    )
    console.print(f"trace: {summary['trace']} (open it in https://ui.perfetto.dev)", highlight=False)
