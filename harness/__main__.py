"""``python -m attnbench``: the ``attnbench`` command (:mod:`attnbench.launch`).

Layer ``top``: may import any room.
"""

from __future__ import annotations

import sys

from attnbench.launch import main

if __name__ == "__main__":
    sys.exit(main())
