"""``--executor ray`` on a local Ray cluster of two CPUs that this module starts: a sweep whose
driver is killed, then resumed, has exactly one record per pair, with the statuses of a local
run; a Ray worker killed under a pair ends as ``crashed`` and the sweep goes on.

Skipped where Ray is not installed (``pip install "attnbench[ray]"``); deselect with ``-m "not ray"``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from cli_helpers import attnbench

from attnbench.measure.records import read_records, record_key

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.xdist_group("ray")]

HERE = Path(__file__).resolve().parent
PLUGIN = HERE / "status_plugins" / "misbehaving.py"
TINY = HERE / "status_plugins" / "tiny.toml"


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A Ray cluster of this machine with two CPUs; its address, for ``--address``."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    context = ray.init(
        num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False, object_store_memory=100 * 2**20
    )
    try:
        yield str(context.address_info["gcs_address"])
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def one_each(folder: Path) -> dict[tuple[Any, ...], dict[str, Any]]:
    rows = read_records(folder / "results.jsonl")
    keys = [record_key(r) for r in rows]
    assert len(keys) == len(set(keys)), f"{folder}: a pair recorded twice"
    return dict(zip(keys, rows, strict=True))


def _attnbench_workers(plugin: Path) -> list[psutil.Process]:
    """Live worker processes that load ``plugin``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "attnbench.sweep.worker" in cmdline and str(plugin) in cmdline:
            found.append(proc)
    return [p for p in found if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_a_ray_sweep_killed_and_resumed_has_one_record_per_pair_with_a_local_runs_statuses(
    cluster: str, tmp_path: Path
) -> None:
    plugin = tmp_path / "misbehaving.py"
    shutil.copy(PLUGIN, plugin)  # a path of its own, to find this run's workers by
    proc = attnbench("run", str(TINY), "--plugin", str(plugin), "--out", str(tmp_path / "local"), "--no-report")
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "ray"
    cmd = [sys.executable, "-m", "attnbench", "run", str(TINY), "--plugin", str(plugin), "--out", str(out)]
    cmd += ["--executor", "ray", "--address", cluster, "--no-report"]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(read_records(out / "results.jsonl")) < 2:
        time.sleep(0.1)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    kept = read_records(out / "results.jsonl")
    local = one_each(tmp_path / "local")
    assert 2 <= len(kept) < len(local)

    gone_by = time.monotonic() + 30  # Ray ends the dead driver's tasks, and their workers die with them
    while time.monotonic() < gone_by and _attnbench_workers(plugin):
        time.sleep(0.5)
    assert not _attnbench_workers(plugin)

    proc = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    on_ray = one_each(out)
    assert all(row in on_ray.values() for row in kept)  # what was finished before the kill is kept as it was
    assert {k: r["status"] for k, r in on_ray.items()} == {k: r["status"] for k, r in local.items()}
    assert {"ok", "crashed", "skipped", "unavailable", "unsupported"} <= {r["status"] for r in on_ray.values()}
    ran = [r for r in on_ray.values() if r["worker_pid"]]
    assert ran and all(r["host"] and r["node"] and r["device_name"] for r in ran)  # which node and device ran it
    crashed = next(r for r in on_ray.values() if r["status"] == "crashed")
    assert "SIGSEGV" in crashed["reason"]  # the worker inside the task died as it does locally

    info = json.loads((out / "run.json").read_text())
    assert info["executor"]["name"] == "ray" and info["executor"]["cpu_task"] == {"num_cpus": 2}
    assert {c["host"] for c in info["calibration"]} == {socket.gethostname()}  # measured on its node


KILLABLE = '''
"""Two implementations that write their worker's PID beside this file, then wait to be killed."""
import os
import time
from pathlib import Path

from attnbench import register

HERE = Path(__file__).resolve().parent


def _wait(name):
    (HERE / f"{name}.pid").write_text(str(os.getpid()))
    time.sleep(600)


@register("killed_worker", description="the test kills its worker")
def killed_worker(q, k, v, *, causal, scale, **options):
    _wait("killed_worker")


@register("killed_ray_worker", description="the test kills the Ray worker that runs its task")
def killed_ray_worker(q, k, v, *, causal, scale, **options):
    _wait("killed_ray_worker")
'''

KILL_SUITE = """
[suite]
name = "killed"
implementations = ["naive", "killed_worker", "killed_ray_worker", "sdpa"]
baseline = ""
[grid]
heads = [1]
seq_len = [32]
head_dim = [16]
dtype = ["float32"]
causal = [false]
[budget]
timeout_s = 300
min_time_s = 0.01
max_time_s = 0.02
"""


@pytest.mark.slow
def test_a_killed_ray_worker_ends_as_crashed_and_the_sweep_goes_on(cluster: str, tmp_path: Path) -> None:
    (tmp_path / "killable.py").write_text(KILLABLE)
    (tmp_path / "killed.toml").write_text(KILL_SUITE)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "attnbench", "run", str(tmp_path / "killed.toml"), "--out", str(out)]
    cmd += ["--plugin", str(tmp_path / "killable.py"), "--executor", "ray", "--address", cluster, "--no-report"]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed: dict[str, int] = {}
    deadline = time.monotonic() + 240
    while driver.poll() is None and time.monotonic() < deadline:
        for name in ("killed_worker", "killed_ray_worker"):
            pid_file = tmp_path / f"{name}.pid"
            if name in killed or not pid_file.exists() or not pid_file.read_text():
                continue
            worker = psutil.Process(int(pid_file.read_text()))
            target = worker if name == "killed_worker" else worker.parent()
            assert target is not None
            if name == "killed_ray_worker":
                assert "ray" in " ".join(target.cmdline()).lower(), target.cmdline()  # the task's Ray worker
            os.kill(target.pid, signal.SIGKILL)
            killed[name] = target.pid
        time.sleep(0.2)
    _, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 0, stderr[-3000:]
    assert set(killed) == {"killed_worker", "killed_ray_worker"}

    records = {r["impl"]: r for r in one_each(out).values()}
    assert set(records) == {"naive", "killed_worker", "killed_ray_worker", "sdpa"}
    assert records["killed_worker"]["status"] == "crashed" and "SIGKILL" in records["killed_worker"]["reason"]
    assert records["killed_ray_worker"]["status"] == "crashed"
    assert "Ray worker died" in records["killed_ray_worker"]["reason"]
    assert records["naive"]["status"] == records["sdpa"]["status"] == "ok"  # every other record intact
