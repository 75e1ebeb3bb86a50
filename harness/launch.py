"""The ``attnbench`` command's entry point: for ``attnbench run``, a worker process is started
before anything else, then the command line (:mod:`attnbench.cli`) is imported and run.

Both the command and its worker begin by importing PyTorch (about two seconds each on a
two-core machine); started this way they do it side by side rather than one after the other.
The worker is an ordinary one (:func:`attnbench.sweep.workers.start_early`): the first pool that
asks for a worker with the same plugin files takes it, and it is stopped if none does.

Layer ``top``: may import any room.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: The commands that start a worker.
WORKER_COMMANDS = ("run",)


def plugin_files(argv: list[str]) -> list[str]:
    """The ``--plugin FILE`` arguments, resolved as the command resolves them."""
    found: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--plugin" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            found.append(arg.partition("=")[2])
    return [str(Path(p).resolve()) for p in found]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in WORKER_COMMANDS and not {"-h", "--help"} & set(args):
        plugins = plugin_files(args)
        if all(Path(p).is_file() for p in plugins):  # a missing file is the command's error to say
            from attnbench.sweep.workers import start_early

            start_early(plugins)
    from attnbench.cli import main as command

    return command(argv)


if __name__ == "__main__":
    sys.exit(main())
