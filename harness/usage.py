"""How every ``attnbench`` command ends on a user's mistake: exit code 2 and one sentence on
standard error, never a traceback.

Layer ``top``: may import any room.
"""

from __future__ import annotations

import sys

#: The exit code of a command given bad input.
USAGE_ERROR = 2


def fail(message: str) -> int:
    """Say ``message`` as ``attnbench: error: …`` on standard error; the code to exit with."""
    print(f"attnbench: error: {message}", file=sys.stderr)
    return USAGE_ERROR
