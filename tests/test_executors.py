"""Choosing an executor, and the parts of the Ray executor that need neither Ray nor a GPU: what
a task reserves, what ``cuda:all`` means on a cluster, and how a GPU task names its device."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from attnbench.cli import main
from attnbench.measure.records import Record
from attnbench.sweep.executors import create, ray_task
from attnbench.sweep.executors.ray_driver import GPU_SHARE, NODE_RESOURCE, cluster_devices, task_options
from attnbench.sweep.jobs import ExecutorError


def node(cpus: float, gpus: float = 0, alive: bool = True, **extra: float) -> dict[str, Any]:
    return {"Alive": alive, "Resources": {"CPU": cpus, "GPU": gpus, **extra}}


def test_a_cpu_case_reserves_every_cpu_of_a_node() -> None:
    cpu, gpu = task_options([node(2), node(2)])
    assert cpu == {"num_cpus": 2}
    assert gpu == {"num_gpus": 1}  # and Ray's one CPU: a CPU case cannot start beside it


def test_on_nodes_of_different_sizes_a_cpu_case_reserves_the_largest() -> None:
    cpu, _ = task_options([node(8), node(64, gpus=8), node(16), node(128, alive=False)])
    assert cpu == {"num_cpus": 64}  # only a node of 64 can hold it, and then nothing else runs there


def test_a_node_resource_reserves_a_node_of_any_size() -> None:
    cpu, gpu = task_options([node(8, **{NODE_RESOURCE: 1}), node(64, gpus=8, **{NODE_RESOURCE: 1}), node(0)])
    assert cpu == {"num_cpus": 1, "resources": {NODE_RESOURCE: 1.0}}
    assert gpu == {"num_gpus": 1, "resources": {NODE_RESOURCE: GPU_SHARE}}
    assert 8 * GPU_SHARE < 1  # eight GPU tasks of a node fit beside each other, never beside a CPU case


def test_cuda_all_on_a_cluster_is_as_many_gpus_as_its_largest_node() -> None:
    assert cluster_devices([node(8), node(32, gpus=4), node(32, gpus=8, alive=False)]) == [
        "cpu",
        *map("cuda:{}".format, range(4)),
    ]
    assert cluster_devices([node(2)]) == ["cpu"]


def test_the_local_executor_is_the_default_and_takes_no_address() -> None:
    assert create("local") is None
    with pytest.raises(ExecutorError, match="--executor ray"):
        create("local", address="auto")
    with pytest.raises(ExecutorError, match="expected one of local, ray"):
        create("dask")


def test_address_without_ray_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "smoke", "--address", "auto", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "--executor ray" in err and err.count("\n") == 1


def test_without_ray_installed_executor_ray_exits_2_saying_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where it is not installed
    assert main(["run", "smoke", "--executor", "ray", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "attnbench[ray]"' in err
    assert not (tmp_path / "r").exists()


class FakePool:
    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []
        self.closed = False

    def request(self, job: dict[str, Any], budgets: object) -> dict[str, Any]:
        self.jobs.append(job)
        if job["op"] == "calibrate":
            return {"calibration": {"device": job["device"], "dtype": job["dtype"], "threads": 0, "gflops": 900.0}}
        record = Record(impl=job["impl"], status="ok", case=job["case"], device_name="H100", host="gpu-node-7")
        return {"record": record.as_dict()}

    def close(self) -> None:
        self.closed = True


def test_a_gpu_task_runs_its_case_on_the_gpu_ray_reserved_and_says_which(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pool = FakePool()
    where = ray_task.Node("gpu-node-7", "abc123", 5, "NVIDIA H100 80GB HBM3", "550.54.15")
    monkeypatch.setattr(ray_task, "this_node", lambda: where)
    monkeypatch.setattr(ray_task, "_pool", lambda plugins, node: pool)
    monkeypatch.setattr(ray_task.tempfile, "gettempdir", lambda: str(tmp_path))
    case = {"seq_len": 64, "device": "cuda:3", "dtype": "bfloat16", "threads": 0}
    job = {"op": "case", "impl": "sdpa", "case": case, "baseline": "", "budget": {}, "calibration": {}}
    result = ray_task.run_pair(job, {"timeout_s": 5.0, "max_time_s": 1.0}, [], [], "run-1")

    calibrate, sent = pool.jobs
    assert calibrate["op"] == "calibrate" and calibrate["device"] == "cuda:0"  # Ray shows the task its GPU alone
    assert sent["case"]["device"] == "cuda:0" and sent["calibration"]["gflops"] == 900.0
    record = result["record"]
    assert record["device"] == "cuda:3"  # the pair keeps its own name for its device
    assert (record["host"], record["node"], record["gpu_index"], record["driver"]) == (
        "gpu-node-7", "abc123", 5, "550.54.15",
    )  # fmt: skip
    assert result["calibration"]["host"] == "gpu-node-7" and result["calibration"]["gpu_index"] == 5
    assert pool.closed  # no idle worker keeps memory on a GPU Ray may lend to another task

    again = ray_task.run_pair(job, {"timeout_s": 5.0, "max_time_s": 1.0}, [], [result["calibration"]], "run-1")
    assert [j["op"] for j in pool.jobs] == ["calibrate", "case", "case"]  # measured once per host and device
    assert again["calibration"] is None
