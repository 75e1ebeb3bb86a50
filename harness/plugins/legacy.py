"""The pre-0.2 import name: ``from harness import register`` keeps working, with a warning.

attnbench used to install its engine as a top-level package called ``harness``. It is now
installed as ``attnbench`` (the folder keeps its name), so ``harness`` is no longer claimed.
Plugins written for the old name are imported by attnbench's own registry, after attnbench is
imported; this module then makes ``harness`` and ``harness.X`` the very same module objects as
``attnbench`` and ``attnbench.X`` (never second copies with a second registry).

Layer ``plugins``: imports ``attnbench.case`` and ``attnbench.plugins`` only.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

OLD, NEW = "harness", "attnbench"
MESSAGE = "the module name 'harness' is deprecated: import attnbench instead (from attnbench import register)"


class LegacyAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``harness`` and ``harness.X`` to the already-importable ``attnbench`` modules."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == OLD or fullname.startswith(OLD + "."):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        if spec.name == OLD:
            warnings.warn(MESSAGE, DeprecationWarning, stacklevel=2)
        return importlib.import_module(NEW + spec.name[len(OLD) :])

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module is attnbench's own, already executed."""


def install() -> None:
    """Put the alias first on ``sys.meta_path`` (once), ahead of any ``harness/`` folder on the path."""
    if not any(isinstance(f, LegacyAlias) for f in sys.meta_path):
        sys.meta_path.insert(0, LegacyAlias())


def become_alias(name: str) -> None:
    """Called when a checkout's ``harness/`` folder was imported under its folder name: make that
    name point at ``attnbench`` instead of running the package a second time."""
    warnings.warn(MESSAGE, DeprecationWarning, stacklevel=3)
    install()
    sys.modules[name] = importlib.import_module(NEW)
