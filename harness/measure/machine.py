"""What a run was measured on: the machine, its accelerators and the software versions.

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def gpu_info() -> dict[str, Any]:
    """The first GPU's name and every GPU's, the driver and the CUDA version (None or empty
    where there is no CUDA device)."""
    import torch

    if not torch.cuda.is_available():
        return {"gpu": None, "gpus": [], "driver": None, "cuda": None}
    driver = None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"gpu": names[0], "gpus": names, "driver": driver, "cuda": torch.version.cuda}


def machine_info() -> dict[str, Any]:
    """OS, CPU model, cores, memory, GPU, driver and CUDA version, and a short id."""
    host = socket.gethostname()
    info: dict[str, Any] = {
        "hostname": host,
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        **gpu_info(),
    }
    accel = (info["gpu"] or "cpu").lower().replace("nvidia ", "").split()[0]
    info["id"] = f"{host}-{accel}"
    return info


def versions() -> dict[str, str | None]:
    import numpy
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "xformers": _version("xformers"),
        "attnbench": _version("attnbench"),
    }


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the attnbench checkout (None outside a git checkout)."""
    where = path or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
