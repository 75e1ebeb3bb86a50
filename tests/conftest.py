"""Session set-up: every run the tests start reuses one calibration per (device, dtype, threads),
measured by the first run that needs it in this session (see attnbench.sweep.calibration_cache); a
test that needs a calibration measured in its own run points the variable elsewhere. The reports
of the recorded runs are rendered once per session and shared by the tests that read them."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from attnbench.implementations._inductor_isa import ENV as ISA_ENV
from attnbench.sweep.calibration_cache import ENV

_FOLDER = tempfile.mkdtemp(prefix="attnbench-tests-")
os.environ.setdefault(ENV, str(Path(_FOLDER) / "calibration.json"))
os.environ.setdefault(ISA_ENV, str(Path(_FOLDER) / "inductor_isa.json"))  # Inductor's ISA probe, once a session


RECORDED = Path(__file__).parent / "data" / "recorded"


@pytest.fixture(scope="session")
def recorded_report(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``recorded_report(NAME)``: the folder of the report of ``tests/data/recorded/NAME``,
    rendered by today's code the first time a test asks for it. Tests only read it."""
    from attnbench.results.report import write_report

    made: dict[str, Path] = {}

    def report(name: str) -> Path:
        if name not in made:
            folder = tmp_path_factory.mktemp(f"report-{name}")
            write_report([RECORDED / name], folder)
            made[name] = folder
        return made[name]

    return report
