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


@nox.session(default=False)
def pytest_benchmark(session: nox.Session) -> None:
    """The suites through pytest-benchmark: ``nox -s pytest_benchmark -- --attnbench-suite quick``."""
    install(session, "[dev]")
    session.run("python", "-m", "pytest", "benchmarks", "--benchmark-json=benchmark.json", *session.posargs)
