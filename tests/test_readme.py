"""The README's plugin section, run as written: its plugin files and its commands, in a fresh
folder, so that the README cannot drift from the program."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.measure.records import read_records

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README[README.index("## Adding an implementation") : README.index("## nox and pytest-benchmark")]
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks() -> list[tuple[str, str]]:
    return [(lang, body) for lang, body in BLOCK.findall(SECTION)]


def plugin_files() -> dict[str, str]:
    """The section's Python blocks that name their file on their first line (``# name.py``)."""
    out = {}
    for lang, body in blocks():
        first = body.splitlines()[0]
        if lang == "python" and re.fullmatch(r"# [\w.]+\.py", first):
            out[first[2:]] = body
    return out


def commands_for(name: str) -> list[str]:
    """The section's shell commands that use the plugin file ``name``."""
    found = []
    for lang, body in blocks():
        if lang == "bash":
            found += [line for line in body.splitlines() if f"--plugin {name}" in line]
    return found


def run_as_written(tmp_path: Path, name: str) -> list[Path]:
    (tmp_path / name).write_text(plugin_files()[name], encoding="utf-8")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    commands = commands_for(name)
    assert commands, f"the README shows no command for {name}"
    for command in commands:
        proc = subprocess.run(
            shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return sorted((tmp_path / "results").glob("*_*_*"))


def test_the_readme_names_its_plugin_files() -> None:
    assert {"my_attention.py", "local_attention_plugin.py"} <= set(plugin_files())


@pytest.mark.slow
def test_the_first_plugin_works_verbatim_and_joins_smoke_and_quick(tmp_path: Path) -> None:
    runs = run_as_written(tmp_path, "my_attention.py")
    suites = {}
    for run in runs:
        records = read_records(run / "results.jsonl")
        suites[run.name.split("_")[1]] = records
        mine = [r for r in records if r["impl"] == "my_attention"]
        assert mine and all(r["status"] == "ok" for r in mine), [(r["status"], r["reason"]) for r in mine]
        assert (run / "report.html").is_file()
    assert {"smoke", "quick"} <= set(suites)


@pytest.mark.skipif(importlib.util.find_spec("local_attention") is None, reason="local-attention is not installed")
@pytest.mark.slow
def test_the_third_party_example_works_verbatim(tmp_path: Path) -> None:
    (run,) = run_as_written(tmp_path, "local_attention_plugin.py")
    mine = [r for r in read_records(run / "results.jsonl") if r["impl"] == "local_attention"]
    assert mine and all(r["status"] == "ok" for r in mine), [(r["status"], r["reason"]) for r in mine]


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    """``.ci/run`` ends with the README's test command, so CI installs the extras the tests need
    (a test command without the ``hf`` extra once skipped every transformers test in CI)."""
    setup = README[README.index("## Set up") : README.index("## The command line")]
    tests = setup[setup.index("Run the tests:") :]
    command = BLOCK.findall(tests)[0][1].strip()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == command
    for extra in ("dev", "xformers", "ray", "hf"):
        assert re.search(rf"\[[\w,]*\b{extra}\b[\w,]*\]", command), extra
