"""Sessions for developing and running attnbench: ``nox -l`` lists them.

Sessions install the CPU build of torch (``constraints/cpu.txt``) where no NVIDIA GPU is
present, so that nothing pulls a multi-gigabyte CUDA build by accident; set
``ATTNBENCH_CONSTRAINTS`` to another constraints file, or to ``none`` for no constraints.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"
ROOT = Path(__file__).resolve().parent


def constraints() -> list[str]:
    """``-c FILE`` for pip, or nothing where a GPU is present or the user opted out."""
    chosen = os.environ.get("ATTNBENCH_CONSTRAINTS")
    if chosen == "none":
        return []
    if chosen:
        return ["-c", chosen]
    if shutil.which("nvidia-smi"):
        return []
    return ["-c", str(ROOT / "constraints" / "cpu.txt")]


def install(session: nox.Session, extras: str = "") -> None:
    session.install(*constraints(), "-e", f".{extras}")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite."""
    install(session, "[dev]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style with ruff."""
    session.install("ruff")
    session.run("ruff", "check", ".")


def link_tree(root: Path = ROOT / ".typecheck") -> Path:
    """``root/attnbench``: links to ``harness/``'s files plus ``implementations/`` and ``suites/``,
    the package as installed, for mypy (which cannot follow setuptools' package-dir mapping)."""
    package = root / "attnbench"
    if package.exists():
        shutil.rmtree(package)
    package.mkdir(parents=True)
    for entry in (ROOT / "harness").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for folder in ("implementations", "suites"):
        (package / folder).symlink_to(ROOT / folder)
    return root


@nox.session
def typecheck(session: nox.Session) -> None:
    """Check types with mypy."""
    install(session, "[dev]")
    link_tree()
    session.run("mypy")
    session.run("mypy", "noxfile.py")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Run a suite: ``nox -s bench -- SUITE [attnbench run options]`` (default: quick)."""
    install(session)
    args = session.posargs or ["quick"]
    session.run("attnbench", "run", *args)


@nox.session(default=False)
def report(session: nox.Session) -> None:
    """Write the report of result folders: ``nox -s report -- DIR [DIR...] [--out OUT]``."""
    install(session)
    if not session.posargs:
        session.error("give one or more result folders: nox -s report -- results/<run>")
    session.run("attnbench", "report", *session.posargs)


@nox.session(default=False)
def compare(session: nox.Session) -> None:
    """Compare two runs: ``nox -s compare -- BASE NEW [--threshold PCT] [--fail-on-regression]``."""
    install(session)
    if len(session.posargs) < 2:
        session.error("give two result folders: nox -s compare -- BASE NEW")
    session.run("attnbench", "compare", *session.posargs)


def last_run(results: Path, suite: str, machine: str, before: Path | None = None) -> Path | None:
    """The newest result folder of ``suite`` made on ``machine`` (a ``run.json`` machine id),
    other than ``before``; None when there is none."""
    import json

    found = []
    for run_json in results.glob("*/run.json"):
        if run_json.parent == before:
            continue
        try:
            meta = json.loads(run_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if meta.get("suite", {}).get("name") == suite and meta.get("machine", {}).get("id") == machine:
            found.append((str(meta.get("started", "")), run_json.parent))
    return max(found)[1] if found else None


@nox.session(default=False)
def kernels(session: nox.Session) -> None:
    """The kernels suite, then ``compare --fail-on-regression`` against the last run of it
    recorded on this machine: ``nox -s kernels -- [attnbench run options]``. The first run on a
    machine has nothing to compare with and only records."""
    import json
    import time

    install(session)
    out = ROOT / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}_kernels_gate"
    session.run("attnbench", "run", "kernels", "--out", str(out), *session.posargs)
    machine = json.loads((out / "run.json").read_text(encoding="utf-8"))["machine"]["id"]
    previous = last_run(ROOT / "results", "kernels", machine, before=out)
    if previous is None:
        session.log(f"no earlier kernels run of {machine} in results/: this one is the baseline from now on")
        return
    session.run("attnbench", "compare", str(previous), str(out), "--fail-on-regression")


@nox.session(default=False)
def pytest_benchmark(session: nox.Session) -> None:
    """The suites through pytest-benchmark: ``nox -s pytest_benchmark -- --attnbench-suite quick``."""
    install(session, "[dev]")
    session.run("python", "-m", "pytest", "benchmarks", "--benchmark-json=benchmark.json", *session.posargs)
