"""The public API of attnbench, re-exported by the package: :func:`register` for plugins,
:class:`Implementation` for plugins that need more than a function, :class:`Problem` for what
one call computes, and :func:`load_results` to read a result folder into a pandas DataFrame.

Layer ``top``: may import any room.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attnbench.case.patterns import BlockLayout, Pattern
from attnbench.case.problem import Problem
from attnbench.plugins.contract import Availability, FunctionImplementation, Growth, Implementation
from attnbench.plugins.registry import REGISTRY, Registry, load_registry, register

if TYPE_CHECKING:
    import pandas as pd

__version__ = "0.2.0"

__all__ = [
    "REGISTRY",
    "Availability",
    "BlockLayout",
    "FunctionImplementation",
    "Growth",
    "Implementation",
    "Pattern",
    "Problem",
    "Registry",
    "__version__",
    "load_registry",
    "load_results",
    "register",
]


def load_results(path: Any) -> pd.DataFrame:
    """Load a result folder (or its ``results.jsonl``) into a DataFrame, one row per record."""
    from attnbench.results.read import load_results as _load

    return _load(path)
