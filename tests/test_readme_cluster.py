"""The README's "On a cluster" section works as written: every attnbench command in it parses
with the real command line and names a real suite and a valid shard, and its merge and report
commands run verbatim on the folders its Slurm array leaves behind."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_shards import make_shard

from attnbench.cli import build_parser
from attnbench.measure.records import read_records
from attnbench.sweep.shards import Shard, parse_shard
from attnbench.sweep.suite import load_suite

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README[README.index("## On a cluster") : README.index("## nox and pytest-benchmark")]
BASH = [body for lang, body in re.findall(r"```(\w+)\n(.*?)```", SECTION, re.S) if lang == "bash"]
ARRAY = int(re.search(r"#SBATCH --array=1-(\d+)", SECTION)[1])  # type: ignore[index]


def commands() -> list[str]:
    return [line.strip() for body in BASH for line in body.splitlines() if line.strip().startswith("attnbench ")]


def test_the_section_shows_a_slurm_array_merge_report_and_ray() -> None:
    assert README.index("## On a cluster") < README.index("## nox and pytest-benchmark")
    verbs = [shlex.split(c)[1] for c in commands()]
    assert verbs == ["run", "merge", "report", "run"]
    assert any("--shard ${SLURM_ARRAY_TASK_ID}/" in c for c in commands())
    assert any("--executor ray --address auto" in c for c in commands())


@pytest.mark.parametrize("command", commands())
def test_each_command_parses_as_written(command: str) -> None:
    argv = shlex.split(command.replace("${SLURM_ARRAY_TASK_ID}", str(ARRAY)))[1:]
    args = build_parser().parse_args(argv)  # an unknown option exits here
    if args.command == "run":
        load_suite(args.suite)
        if args.shard:
            assert parse_shard(args.shard) == Shard(ARRAY, ARRAY)  # the array covers every shard


@pytest.mark.slow
def test_merge_and_report_run_verbatim_on_what_the_array_leaves(tmp_path: Path) -> None:
    scaling = load_suite("scaling").text
    for index in range(1, ARRAY + 1):  # results/scaling_${SLURM_ARRAY_TASK_ID}, as each job writes it
        make_shard(tmp_path / "results" / f"scaling_{index}", scaling, Shard(index, ARRAY))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in commands()[1:3]:
        proc = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    merged = tmp_path / "results" / "scaling"
    assert (merged / "report.html").is_file()
    shards = sum(
        len(read_records(tmp_path / "results" / f"scaling_{i}" / "results.jsonl")) for i in range(1, ARRAY + 1)
    )
    assert len(read_records(merged / "results.jsonl")) == shards
