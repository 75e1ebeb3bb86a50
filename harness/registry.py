"""The registry of attention implementations and the three ways to fill it.

1. ``@register("name")`` on a function or an :class:`~harness.contract.Implementation` subclass
   (built-ins in ``implementations/`` and plugin files use this);
2. a plugin file loaded with ``--plugin path/to/file.py``;
3. an installed package's entry point in the group ``attnbench.implementations``, whose target
   is a module or object that registers on import.

A plugin that fails to import is recorded as an unavailable implementation carrying its error;
everything else keeps working.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import pkgutil
import sys
import traceback
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar, overload

from harness.contract import Availability, FunctionImplementation, Implementation

ENTRY_POINT_GROUP = "attnbench.implementations"
T = TypeVar("T")


class RegistryError(Exception):
    """A user-facing registry error: a duplicate or an unknown name."""


class DuplicateImplementationError(RegistryError):
    pass


class UnknownImplementationError(RegistryError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class BrokenPlugin(Implementation):
    """Stands in for a plugin that failed to import: listed, never run."""

    description = "plugin that failed to load"

    def __init__(self, name: str, source: str, error: str) -> None:
        self.name = name  # type: ignore[misc]
        self.source = source
        self.error = error

    def available(self) -> Availability:
        return Availability.no(f"failed to load from {self.source}: {self.error}")


class Registry:
    """Implementations by name. Reading returns copies; a taken name cannot be re-registered."""

    def __init__(self) -> None:
        self._items: dict[str, Implementation] = {}
        self._source = "built-in"
        self._loaded_builtins = False
        self._loaded_entry_points = False
        self._loaded_files: set[Path] = set()

    # -- registering -------------------------------------------------------------------------

    def add(self, impl: Implementation) -> Implementation:
        """Register an implementation instance under ``impl.name``."""
        if not impl.name:
            raise RegistryError(f"{type(impl).__name__} has no name")
        existing = self._items.get(impl.name)
        if existing is not None and not isinstance(existing, BrokenPlugin):
            raise DuplicateImplementationError(
                f"an implementation named {impl.name!r} is already registered (from {existing.source});"
                f" {self._source} cannot register it again — choose another name"
            )
        if impl.source == "built-in":
            impl.source = self._source
        self._items[impl.name] = impl
        return impl

    @overload
    def register(self, name: str, **declaration: Any) -> Callable[[T], T]: ...

    @overload
    def register(self, name: T) -> T: ...

    def register(self, name: Any, **declaration: Any) -> Any:
        """Decorator registering a function or an ``Implementation`` subclass.

        ``@register("name")`` or ``@register("name", description=..., features=[...])`` on a
        function; ``@register("name")`` on a class (its class attributes declare the rest).
        """

        def decorate(target: T) -> T:
            if isinstance(target, type) and issubclass(target, Implementation):
                if declaration:
                    raise RegistryError(f"{name!r}: declare a class's properties as class attributes, not keywords")
                target.name = name  # type: ignore[misc]
                self.add(target())
            elif callable(target):
                self.add(FunctionImplementation(name, target, **declaration))
            else:
                raise RegistryError(f"@register({name!r}) needs a function or an Implementation subclass")
            return target

        if not isinstance(name, str):
            raise RegistryError('use @register("name"): the decorator needs the implementation\'s name')
        return decorate

    # -- reading ------------------------------------------------------------------------------

    def get(self, name: str) -> Implementation:
        """The implementation called ``name``; an unknown name raises with suggestions."""
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            known = ", ".join(sorted(self._items)) or "none"
            raise UnknownImplementationError(f"unknown implementation {name!r}{hint} (known: {known})") from None

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, Implementation]]:
        """``(name, implementation)`` pairs in registration order (a copy)."""
        return list(self._items.items())

    def implementations(self) -> list[Implementation]:
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    # -- loading ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _from(self, source: str) -> Iterator[None]:
        """While loading ``source``, module-level ``register`` calls land in this registry."""
        global _active
        previous, self._source = self._source, source
        previous_active, _active = _active, self
        try:
            yield
        finally:
            self._source = previous
            _active = previous_active

    def _broken(self, name: str, source: str, exc: BaseException) -> None:
        """Record a plugin that failed to load; a name already taken gets its source appended,
        so the failure is listed rather than lost."""
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        if name in self._items:
            name = f"{name} ({source})"
        self._items[name] = BrokenPlugin(name, source, last)

    def load_builtins(self) -> None:
        """Import every module of the ``implementations`` package (once)."""
        if self._loaded_builtins:
            return
        self._loaded_builtins = True
        import implementations

        for info in sorted(pkgutil.iter_modules(implementations.__path__), key=lambda m: m.name):
            if info.name.startswith("_"):
                continue
            with self._from("built-in"):
                try:
                    module_name = f"implementations.{info.name}"
                    mine = any(type(i).__module__ == module_name for i in self._items.values())
                    if module_name in sys.modules and not mine:  # a second registry: register again
                        importlib.reload(sys.modules[module_name])
                    elif mine:
                        continue
                    else:
                        importlib.import_module(module_name)
                except Exception as exc:
                    self._broken(info.name, f"implementations/{info.name}.py", exc)

    def load_entry_points(self) -> None:
        """Load the ``attnbench.implementations`` entry points of installed packages (once)."""
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            source = f"entry point {ep.name} = {ep.value}"
            with self._from(source):
                try:
                    target = ep.load()
                    if any(type(impl) is target for impl in self._items.values()):
                        pass  # the import already registered this class
                    elif isinstance(target, type) and issubclass(target, Implementation) and ep.name not in self:
                        target.name = target.name or ep.name  # type: ignore[misc]
                        self.add(target())
                    elif isinstance(target, Implementation) and target.name not in self:
                        self.add(target)
                    elif callable(target) and not isinstance(target, type) and ep.name not in self:
                        self.add(FunctionImplementation(ep.name, target))
                except Exception as exc:
                    self._broken(ep.name, source, exc)

    def load_file(self, path: str | Path) -> None:
        """Import a plugin file; its ``@register`` calls add to this registry."""
        resolved = Path(path).resolve()
        if resolved in self._loaded_files:
            return
        if not resolved.is_file():
            raise RegistryError(f"plugin file {str(path)!r} does not exist")
        self._loaded_files.add(resolved)
        module_name = f"attnbench_plugin_{resolved.stem}_{abs(hash(str(resolved))):x}"
        source = f"plugin {resolved}"
        with self._from(source):
            try:
                spec = importlib.util.spec_from_file_location(module_name, resolved)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot import {resolved}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            except RegistryError:
                raise
            except Exception as exc:
                self._broken(resolved.stem, source, exc)

    def load_all(self, plugins: list[str] | tuple[str, ...] = ()) -> Registry:
        """Built-ins, then entry points, then plugin files."""
        self.load_builtins()
        self.load_entry_points()
        for path in plugins:
            self.load_file(path)
        return self


REGISTRY = Registry()
_active = REGISTRY


def register(name: Any, **declaration: Any) -> Any:
    """Register a function or an ``Implementation`` subclass under ``name``.

    Plain function::

        @register("my_attention")
        def my_attention(q, k, v, *, causal: bool, scale: float, **options): ...

    Keywords declare what a function supports: ``description``, ``exact``, ``features``
    (any of causal, window, layout, gqa, cross, backward), ``devices``, ``dtypes``,
    ``growth`` (a :class:`~harness.contract.Growth`) and ``approximates``.
    """
    return _active.register(name, **declaration)


def load_registry(plugins: list[str] | tuple[str, ...] = ()) -> Registry:
    """The process-wide registry with built-ins, entry points and ``plugins`` loaded."""
    return REGISTRY.load_all(plugins)
