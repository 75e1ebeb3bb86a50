"""Modes: what one timed call of a case does. One object per mode, one module each.

A mode owns everything that differs between "a forward call", "a backward pass", "forward and
backward" (and later modes): the zero-argument call that is timed, the work and the bytes it
counts, which accuracy checks apply, and how much more memory than a forward call it keeps.
Adding a mode is one module here plus its entry in :data:`MODES`; nothing else tests mode names.
"""

from __future__ import annotations

from attnbench.case.modes.backward import Backward
from attnbench.case.modes.base import Call, Inputs, Mode
from attnbench.case.modes.decode import Decode
from attnbench.case.modes.forward import Forward
from attnbench.case.modes.forward_backward import ForwardBackward

#: Every mode by name, in the order suites list them.
MODES: dict[str, Mode] = {m.name: m for m in (Forward(), Backward(), ForwardBackward(), Decode())}


def mode(name: str) -> Mode:
    """The mode called ``name``; an unknown name raises ValueError listing the known ones."""
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"unknown mode {name!r}; expected one of {list(MODES)}") from None


__all__ = ["MODES", "Call", "Inputs", "Mode", "mode"]
