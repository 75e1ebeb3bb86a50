"""Session set-up: every run the tests start reuses one calibration per (device, dtype, threads),
measured by the first run that needs it in this session (see attnbench.sweep.calibration_cache); a
test that needs a calibration measured in its own run points the variable elsewhere."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from attnbench.sweep.calibration_cache import ENV

_FOLDER = tempfile.mkdtemp(prefix="attnbench-tests-")
os.environ.setdefault(ENV, str(Path(_FOLDER) / "calibration.json"))
