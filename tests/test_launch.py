"""The command's entry point: a worker started before the command's own imports is the one its
first pool uses (never a second copy), and ``import attnbench`` stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from attnbench.launch import plugin_files
from attnbench.sweep import workers


def test_an_early_worker_is_the_one_the_first_pool_uses() -> None:
    workers.start_early([])
    early = workers._EARLY[-1]
    pool = workers.WorkerPool([])
    try:
        assert pool.get() is early and early.ready and not workers._EARLY
        assert pool.started == 1
        assert pool.request({"op": "describe"}, 60)["describe"]
    finally:
        pool.close()


def test_an_early_worker_for_other_plugins_is_stopped_not_used(tmp_path: Path) -> None:
    plugin = tmp_path / "p.py"
    plugin.write_text("")
    workers.start_early([str(plugin)])
    early = workers._EARLY[-1]
    pool = workers.WorkerPool([])
    try:
        assert pool.get() is not early
        assert early.proc.wait(timeout=10) is not None  # killed and reaped
    finally:
        pool.close()


def test_plugin_files_are_read_as_the_command_reads_them(tmp_path: Path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    args = ["run", "smoke", "--plugin", str(a), f"--plugin={b}", "--only", "x"]
    assert plugin_files(args) == [str(a.resolve()), str(b.resolve())]


def test_import_attnbench_does_not_import_torch_until_the_api_is_used() -> None:
    code = (
        "import sys, attnbench; assert 'torch' not in sys.modules, 'imported torch';"
        " attnbench.register; assert 'torch' in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_the_package_names_the_api_it_reads_lazily() -> None:
    import attnbench
    import attnbench.api

    assert attnbench.__all__ == attnbench.api.__all__
