"""Running the real ``attnbench`` command line from tests."""

from __future__ import annotations

import subprocess
import sys


def attnbench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m attnbench ARGS`` (the installed command) in a subprocess, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "attnbench", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
