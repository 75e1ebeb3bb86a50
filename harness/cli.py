"""The ``attnbench`` command: list, check, run, suite, report, merge, compare, rejudge, profile.

Mistakes a user can make (a bad suite, an unknown name, a missing folder) end with exit code 2
and one sentence on standard error, never a traceback.

Layer ``top``: may import any room.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from attnbench.case.status import Status
from attnbench.implementations.hf import dispatched
from attnbench.listing import cmd_list, implementation_table  # noqa: F401 (implementation_table: the tests' too)
from attnbench.plugins.registry import RegistryError, load_registry
from attnbench.sweep.suite import Suite, SuiteError, load_suite, parse_suite
from attnbench.usage import fail as _fail


def cmd_check(args: argparse.Namespace) -> int:
    from attnbench.measure.check import CaseSpecError, parse_case, run_checks

    try:
        registry = load_registry(args.plugin)
        impl = registry.get(args.name)
        given = [parse_case(spec) for spec in args.case] or None
        available = impl.available()
        if not available.ok:
            return _fail(f"{args.name} is unavailable here: {available.reason}")
        outcomes = run_checks(impl, given)
    except (RegistryError, CaseSpecError) as exc:
        return _fail(str(exc))
    console = Console()
    table = Table(title=f"attnbench check {impl.name} ({'exact' if impl.exact else 'approximation'})")
    table.add_column("case", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("detail", overflow="fold")
    shown = (Status.OK, Status.INACCURATE, Status.ERROR, Status.UNSUPPORTED)
    for o in outcomes:
        table.add_row(o.label, f"[{o.status.info.terminal}]{o.status}[/]", o.detail)
    console.print(table)
    counts = {s: sum(o.status == s for o in outcomes) for s in shown}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    seconds = sum(o.seconds for o in outcomes)
    console.print(f"{impl.name}: {summary} in {seconds:.1f} s", highlight=False)
    return 1 if counts[Status.INACCURATE] or counts[Status.ERROR] else 0


def cmd_suite(args: argparse.Namespace) -> int:
    from attnbench.sweep.models import ModelConfigError, load_config, presets, shapes_of, suite_text

    if args.list_models:
        for name, path in presets().items():
            config = json.loads(path.read_text(encoding="utf-8"))
            print(f"{name:<14} {config.get('_name', '')}: {config.get('_source', '')}")
        return 0
    if not args.model:
        return _fail("give --model CONFIG (a config.json or a preset: see --list-models)")
    try:
        name, config = load_config(args.model)
        text = suite_text(shapes_of(name, config), dispatched())
        parse_suite(text, f"--model {args.model}")  # what it writes must be a valid suite
    except (ModelConfigError, SuiteError) as exc:
        return _fail(str(exc))
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"suite: {args.out}")
    else:
        print(text, end="")
    return 0


def _suite_for(args: argparse.Namespace) -> Suite:
    """The suite named on the command line (or made from ``--model``), or (resuming without one)
    the suite of the folder."""
    from attnbench.sweep.folder import read_run_json

    if getattr(args, "model", None):
        from attnbench.sweep.models import load_config, shapes_of, suite_text

        name, config = load_config(args.model)
        return parse_suite(suite_text(shapes_of(name, config), dispatched()), f"model {args.model}")
    if args.suite is None and args.resume and args.out:
        given = read_run_json(Path(args.out))["suite"]
        if not isinstance(given.get("text"), str):
            raise SuiteError(f"--resume: {args.out}/run.json holds no suite text")
        return parse_suite(given["text"], given.get("path") or f"{args.out}/run.json")
    return load_suite(args.suite or "quick")


#: The minutes a model suite is fitted to unless ``--max-minutes`` says otherwise: every length of a
#: model's context is planned, and those this machine cannot finish in time are skipped, named.
MODEL_MINUTES = 15.0


def _max_minutes(args: argparse.Namespace) -> float | None:
    given = args.max_minutes if args.max_minutes is not None else (MODEL_MINUTES if args.model else None)
    return given or None


def cmd_run(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    from attnbench.sweep import executors
    from attnbench.sweep.folder import RunError
    from attnbench.sweep.jobs import ExecutorError
    from attnbench.sweep.models import ModelConfigError
    from attnbench.sweep.runner import Runner, describe
    from attnbench.sweep.shards import parse_shard
    from attnbench.sweep.workers import WorkerPool

    if args.resume and not args.out:
        return _fail("--resume needs --out DIR: the folder of the run to finish")
    if args.model and args.suite:
        return _fail("give a suite or --model, not both")
    if args.max_minutes is not None and not args.max_minutes >= 0:
        return _fail(f"--max-minutes {args.max_minutes:g}: expected minutes >= 0 (0: no limit)")
    pool: WorkerPool | None = None
    executor: executors.Executor | None = None
    try:
        shard = parse_shard(args.shard) if args.shard else None
    except ValueError as exc:
        return _fail(str(exc))
    try:
        plugins = [str(Path(p).resolve()) for p in args.plugin]
        for given, path in zip(args.plugin, plugins, strict=True):
            if not Path(path).is_file():
                raise RegistryError(f"plugin file {given!r} does not exist")
        suite = _suite_for(args)
        executor = executors.create(args.executor, address=args.address)
        pool = WorkerPool(plugins)
        catalog = describe(pool)
        suite = parse_suite(suite.text, suite.path, catalog.known())  # the names, now that they are known
        only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
        runner = Runner(suite, catalog, Path(args.out) if args.out else None, plugins=plugins, only=only,
                        resume=args.resume, pool=pool, executor=executor, shard=shard,
                        paired=not args.no_paired_timings, started_at=began,
                        max_minutes=_max_minutes(args))  # fmt: skip
        out = runner.run()
    except (SuiteError, RegistryError, RunError, ModelConfigError, ExecutorError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("attnbench: interrupted; finished records are kept — finish with --resume", file=sys.stderr)
        return 130
    finally:
        if pool is not None:
            pool.close()
        if executor is not None:
            executor.close()
    print(f"results: {out}")
    from attnbench.sweep.cost import add_report, words

    reported = time.perf_counter()
    if not args.no_report:
        _report([out], None, quiet=False)
    session = add_report(out, time.perf_counter() - reported)
    if session is not None:
        print(f"cost: {words(session)}")
    return 0


def _report(dirs: list[Path], out: Path | None, quiet: bool) -> int:
    from attnbench.results.report import write_report

    try:
        html = write_report(dirs, out)
    except Exception as exc:  # the results are safe; say why the report failed
        print(f"attnbench: the report could not be written: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not quiet:
        print(f"report: {html}")
        from attnbench.results.report.ratios import verdict_lines

        for line in verdict_lines(html.parent / "tables" / "ratios.csv"):
            print(line)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from attnbench.results.read import load_results

    dirs = [Path(d) for d in args.dirs]
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        return _fail(f"no such result folder: {', '.join(missing)}")
    for d in dirs:
        try:
            empty = not len(load_results(d))
        except (OSError, ValueError) as exc:
            return _fail(f"{d} cannot be read: {exc}")
        if empty:
            return _fail(f"{d} holds no results (no records in results.jsonl): nothing to report")
    return _report(dirs, Path(args.out) if args.out else None, quiet=False)


def cmd_merge(args: argparse.Namespace) -> int:
    from attnbench.sweep.merge import MergeError, merge

    try:
        merged = merge([Path(d) for d in args.dirs], Path(args.out))
    except MergeError as exc:
        return _fail(str(exc))
    print(f"merged {merged.records} records from {len(args.dirs)} folders into {merged.out}")
    if not merged.planned:
        print("the folders hold no shard plan: pairs that none of them recorded cannot be listed")
    for name, shard in merged.missing:
        print(f"missing: {name} (shard {shard})")
    if merged.missing:
        print(f"{len(merged.missing)} pairs missing; run them with: attnbench run --resume --out {merged.out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from attnbench.results.compare import CompareError, run_compare

    for d in (args.base, args.new):
        if not Path(d).exists():
            return _fail(f"no such result folder: {d}")
    if args.threshold < 0:
        return _fail("--threshold must be a percentage >= 0")
    try:
        return run_compare(Path(args.base), Path(args.new), args.threshold, args.fail_on_regression,
                           Path(args.out) if args.out else None)  # fmt: skip
    except CompareError as exc:
        return _fail(str(exc))


def cmd_rejudge(args: argparse.Namespace) -> int:
    from attnbench.results.rejudge import rejudge

    folder = Path(args.dir)
    if not (folder / "results.jsonl").is_file():
        return _fail(f"{folder} holds no results.jsonl: not a result folder")
    try:
        registry = load_registry(args.plugin)
        only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
        for name in only or []:
            registry.get(name)
        lines = rejudge(folder, registry, only)
    except RegistryError as exc:
        return _fail(str(exc))
    changed = sum(line["status"] != line["was"]["status"] for line in lines)
    print(f"rejudged {len(lines)} record(s) of {folder}, {changed} changed verdict: {folder / 'rejudged.jsonl'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnbench", description="Benchmark and compare attention implementations.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the registered implementations")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE", help="load a plugin file (repeatable)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("check", help="a quick accuracy verdict for one implementation (no timing)")
    p.add_argument("name", metavar="NAME", help="the implementation to check")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE", help="load a plugin file (repeatable)")
    p.add_argument(
        "--case", action="append", default=[], metavar="SPEC",
        help="check this case instead of the representative set, e.g. seq_len=512,causal=true,dtype=bfloat16",
    )  # fmt: skip
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("run", help="run a suite")
    p.add_argument("suite", nargs="?", help="a suite name in suites/ or a path to a TOML file (default: quick)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: results/<time>_<suite>_<machine>)")
    p.add_argument("--resume", action="store_true", help="finish the missing pairs of an interrupted run in --out")
    p.add_argument("--only", metavar="NAMES", help="comma-separated implementations to run")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE", help="load a plugin file (repeatable)")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument(
        "--no-paired-timings", action="store_true",
        help="skip the paired timings after the sweep (ratios and slopes then come from records timed apart)",
    )  # fmt: skip
    p.add_argument("--model", metavar="CONFIG", help="run the suite made from a model's config.json or preset")
    p.add_argument(
        "--max-minutes", type=float, metavar="M",
        help="fit the run in M minutes: pairs expected past it are skipped, the largest sizes first"
        f" (default with --model: {MODEL_MINUTES:g}; 0: no limit)",
    )  # fmt: skip
    p.add_argument("--shard", metavar="I/N", help="run only the I-th of N disjoint parts of the suite (join: merge)")
    p.add_argument(
        "--executor", choices=["local", "ray"], default="local",
        help="local: every device of this machine (default); ray: each pair a Ray task on a cluster",
    )  # fmt: skip
    p.add_argument("--address", metavar="ADDR", help="the Ray cluster to use with --executor ray (e.g. auto)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("suite", help="write a suite from a model's shapes")
    p.add_argument("--model", metavar="CONFIG", help="a Hugging Face-style config.json, or a preset name")
    p.add_argument("--out", metavar="FILE", help="write the suite here (default: print it)")
    p.add_argument("--list-models", action="store_true", help="list the shipped model presets")
    p.set_defaults(func=cmd_suite)

    p = sub.add_parser("report", help="write report.md, report.html, tables and plots from result folders")
    p.add_argument("dirs", nargs="+", metavar="DIR")
    p.add_argument("--out", metavar="OUT", help="where to write (default: the first DIR)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("merge", help="join the shards of one suite (run --shard I/N) into one result folder")
    p.add_argument("dirs", nargs="+", metavar="DIR")
    p.add_argument("--out", metavar="DIR", required=True, help="the merged result folder (new)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("rejudge", help="judge a run's records again with today's accuracy criterion (no timing)")
    p.add_argument("dir", metavar="DIR", help="the result folder")
    p.add_argument("--only", metavar="NAMES", help="these implementations' records (default: every inaccurate one)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE", help="load a plugin file (repeatable)")
    p.set_defaults(func=cmd_rejudge)

    p = sub.add_parser("compare", help="compare two runs: real regressions, not noise")
    p.add_argument("base", metavar="BASE")
    p.add_argument("new", metavar="NEW")
    p.add_argument("--threshold", type=float, default=10.0, metavar="PCT", help="slowdown that counts (default 10)")
    p.add_argument(
        "--fail-on-regression", action="store_true",
        help="exit 1 on a significant slowdown, a pair that left ok, or one that vanished",
    )  # fmt: skip
    p.add_argument(
        "--out", metavar="OUT", help="where to write compare.md/html (default: a folder of its own in results/)"
    )
    p.set_defaults(func=cmd_compare)

    from attnbench import profiling

    profiling.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
