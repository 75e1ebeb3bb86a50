"""The registry of attention implementations and the three ways to fill it.

1. ``@register("name")`` on a function or an :class:`~attnbench.plugins.contract.Implementation`
   subclass, in a module that one of the routes below imports;
2. a plugin file loaded with ``--plugin path/to/file.py``;
3. an installed package's entry point in the group ``attnbench.implementations``, whose target
   is a module that registers on import, an ``Implementation`` subclass or a function.
   attnbench's own implementations arrive this way too (its ``pyproject.toml`` declares them),
   so nothing in the engine imports them by name.

Every ``@register`` call is also remembered per module (:data:`_DECLARED`), so a second
registry that loads a module already imported gets the same implementations without a reload.
An entry point that fails to import is an unavailable implementation carrying its error; a
plugin file that fails is an error naming it.

Layer ``plugins``: imports ``attnbench.case`` and ``attnbench.plugins`` only.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, TypeVar, overload

from attnbench.plugins.contract import Availability, FunctionImplementation, Implementation

ENTRY_POINT_GROUP = "attnbench.implementations"
BUILTIN_PREFIX = "attnbench.implementations."
T = TypeVar("T")


class RegistryError(Exception):
    """A user-facing registry error: a duplicate or an unknown name, a missing plugin file."""


class DuplicateImplementationError(RegistryError):
    pass


class UnknownImplementationError(RegistryError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class BrokenPlugin(Implementation):
    """Stands in for a plugin that failed to import: listed, never run."""

    description = "plugin that failed to load"

    def __init__(self, name: str, source: str, error: str) -> None:
        self.name = name
        self.source = source
        self.error = error

    def available(self) -> Availability:
        return Availability.no(f"failed to load from {self.source}: {self.error}")


@dataclass(frozen=True)
class Declared:
    """One ``@register`` call: the name, what it decorated and the keywords it was given."""

    name: str
    target: Any
    declaration: dict[str, Any] = field(default_factory=dict)


#: module name -> the registrations its import made, in order.
_DECLARED: dict[str, list[Declared]] = {}
#: module name -> the module object those registrations came from (a re-import starts afresh). The
#: object, not its id: a module imported again after the first was freed may get the same id.
_DECLARED_BY: dict[str, object] = {}
#: plugin-file module name -> "plugin /path/to/file.py".
_FILE_SOURCES: dict[str, str] = {}


def instantiate(name: str, target: Any, declaration: dict[str, Any]) -> Implementation:
    """An implementation instance named ``name`` from a class, an instance or a function."""
    if isinstance(target, type) and issubclass(target, Implementation):
        if declaration:
            raise RegistryError(f"{name!r}: declare a class's properties as class attributes, not keywords")
        impl = target()
        impl.name = name  # the instance's name: a subclass does not inherit it
        return impl
    if isinstance(target, Implementation):
        target.name = name
        return target
    if callable(target):
        return FunctionImplementation(name, target, **declaration)
    raise RegistryError(f"@register({name!r}) needs a function or an Implementation subclass")


class Registry:
    """Implementations by name. Reading returns copies; a taken name cannot be re-registered."""

    def __init__(self) -> None:
        self._items: dict[str, Implementation] = {}
        self._aliases: dict[str, str] = {}
        self._targets: dict[int, str] = {}  # id(decorated object) -> name it was registered under
        self._replayed: dict[int, Declared] = {}  # the registrations this registry holds, by identity
        self._source: str | None = None  # the route being loaded (for names in error messages)
        self._loaded_builtins = False
        self._loaded_entry_points = False
        self._loaded_files: set[Path] = set()

    # -- registering -------------------------------------------------------------------------

    def add(self, impl: Implementation, source: str | None = None) -> Implementation:
        """Register an implementation instance under ``impl.name``."""
        if not impl.name:
            raise RegistryError(f"{type(impl).__name__} has no name")
        existing = self._items.get(impl.name)
        if existing is not None and not isinstance(existing, BrokenPlugin):
            where = source or self._source or "this call"
            raise DuplicateImplementationError(
                f"an implementation named {impl.name!r} is already registered (from {existing.source});"
                f" {where} cannot register it again: choose another name"
            )
        if source is not None:
            impl.source = source
        self._items[impl.name] = impl
        return impl

    def add_declared(self, item: Declared) -> Implementation:
        """Register one remembered ``@register`` call (once per registry)."""
        if id(item) in self._replayed:
            return self._items[item.name]
        impl = self.add(instantiate(item.name, item.target, item.declaration), source_of(item.target))
        self._replayed[id(item)] = item
        self._targets.setdefault(id(item.target), item.name)
        return impl

    def alias(self, alias: str, name: str) -> None:
        """Let ``alias`` name the implementation registered as ``name`` (one implementation, two names)."""
        if alias == name:
            return
        if alias in self._items and not isinstance(self._items[alias], BrokenPlugin):
            raise DuplicateImplementationError(f"cannot make {alias!r} an alias of {name!r}: the name is taken")
        self._aliases[alias] = name

    @overload
    def register(self, name: str, **declaration: Any) -> Callable[[T], T]: ...

    @overload
    def register(self, name: T) -> T: ...

    def register(self, name: Any, **declaration: Any) -> Any:
        """Decorator registering a function or an ``Implementation`` subclass in this registry."""
        if not isinstance(name, str):
            raise RegistryError('use @register("name"): the decorator needs the implementation\'s name')

        def decorate(target: T) -> T:
            self.add_declared(Declared(name, target, declaration))
            return target

        return decorate

    # -- reading ------------------------------------------------------------------------------

    def get(self, name: str) -> Implementation:
        """The implementation called ``name`` (or aliased so); an unknown name raises with suggestions."""
        name = self._aliases.get(name, name)
        try:
            return self._items[name]
        except KeyError:
            choices = [*self._items, *self._aliases]
            close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            known = ", ".join(sorted(self._items)) or "none"
            raise UnknownImplementationError(f"unknown implementation {name!r}{hint} (known: {known})") from None

    def canonical(self, name: str) -> str:
        """The registered name behind ``name`` (itself unless it is an alias)."""
        return self._aliases.get(name, name)

    def aliases(self) -> dict[str, str]:
        """``{alias: registered name}`` (a copy)."""
        return dict(self._aliases)

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, Implementation]]:
        """``(name, implementation)`` pairs in registration order (a copy)."""
        return list(self._items.items())

    def implementations(self) -> list[Implementation]:
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

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

    def _replay(self, module: str) -> None:
        """Add what ``module`` (and modules of its package) registered when first imported."""
        package = module.split(".")[0] + "."
        for name, declared in list(_DECLARED.items()):
            if name == module or (name.startswith(package) and module.startswith(package)):
                for item in declared:
                    self.add_declared(item)

    def _load_entry_point(self, ep: EntryPoint) -> None:
        source = f"entry point {ep.name} = {ep.value}"
        with self._from(source):
            try:
                target = ep.load()
                self._replay(ep.module)
                if ep.attr:
                    self._adopt(ep.name, target)
            except RegistryError:
                raise
            except Exception as exc:
                self._broken(ep.name, source, exc)

    def _adopt(self, name: str, target: Any) -> None:
        """An entry point naming an object: an alias when the object is registered already, else
        registered under the entry point's name."""
        known = self._targets.get(id(target))
        if known is None:
            known = next((t for t, impl in self._items.items() if impl is target), None)
        if known is not None:
            self.alias(name, known)
        else:
            self.add_declared(Declared(name, target))

    def _entry_points(self, builtin: bool) -> list[EntryPoint]:
        return [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.module.startswith(BUILTIN_PREFIX) == builtin]

    def load_builtins(self) -> None:
        """attnbench's own implementations (its entry points), once."""
        if self._loaded_builtins:
            return
        self._loaded_builtins = True
        for ep in sorted(self._entry_points(builtin=True), key=lambda e: e.module):
            self._load_entry_point(ep)

    def load_entry_points(self) -> None:
        """The ``attnbench.implementations`` entry points of other installed packages, once."""
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for ep in self._entry_points(builtin=False):
            self._load_entry_point(ep)

    def load_file(self, path: str | Path) -> None:
        """Import a plugin file; its ``@register`` calls add to this registry. A missing file, one
        that raises on import, or one that registers a name already taken raises
        :class:`RegistryError` (a file the user names is never dropped in silence; an installed
        entry point that fails is listed as unavailable instead)."""
        resolved = Path(path).resolve()
        if resolved in self._loaded_files:
            return
        if not resolved.is_file():
            raise RegistryError(f"plugin file {str(path)!r} does not exist")
        self._loaded_files.add(resolved)
        module_name = f"attnbench_plugin_{resolved.stem}_{abs(hash(str(resolved))):x}"
        source = f"plugin {resolved}"
        _FILE_SOURCES[module_name] = source
        with self._from(source):
            if module_name in sys.modules:  # loaded by another registry: replay, do not re-run
                self._replay(module_name)
                return
            try:
                spec = importlib.util.spec_from_file_location(module_name, resolved)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot import {resolved}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            except RegistryError:
                sys.modules.pop(module_name, None)
                _DECLARED.pop(module_name, None)
                raise
            except Exception as exc:  # a file the user named: never dropped in silence
                sys.modules.pop(module_name, None)
                _DECLARED.pop(module_name, None)
                last = traceback.format_exception_only(type(exc), exc)[-1].strip()
                raise RegistryError(f"plugin file {str(path)!r} failed to import: {last}") from None

    def load_all(self, plugins: list[str] | tuple[str, ...] = ()) -> Registry:
        """Built-ins, then entry points, then plugin files."""
        self.load_builtins()
        self.load_entry_points()
        for path in plugins:
            self.load_file(path)
        return self


def source_of(target: Any) -> str:
    """Where a registered object came from, named by the module that defines it."""
    module = getattr(target, "__module__", None) or type(target).__module__
    if module.startswith(BUILTIN_PREFIX):
        return "built-in"
    if module in _FILE_SOURCES:
        return _FILE_SOURCES[module]
    loading = _active._source
    if loading and loading.startswith("entry point ") and loading.split(" = ", 1)[-1].split(":")[0] == module:
        return loading
    return f"module {module}"


REGISTRY = Registry()
_active = REGISTRY


def register(name: Any, **declaration: Any) -> Any:
    """Register a function or an ``Implementation`` subclass under ``name``.

    Plain function::

        @register("my_attention")
        def my_attention(q, k, v, *, causal: bool, scale: float, **options): ...

    Keywords declare what a function is and needs: ``description``, ``exact``, ``features``
    (any of causal, window, layout, gqa, cross, backward), ``requires``, ``devices``, ``dtypes``,
    ``growth``, ``approximates``, ``reference``, ``setup``, ``tolerance``, ``flops`` and
    ``bytes_moved`` (see :class:`~attnbench.plugins.contract.FunctionImplementation`).
    """
    if not isinstance(name, str):
        raise RegistryError('use @register("name"): the decorator needs the implementation\'s name')

    def decorate(target: T) -> T:
        item = Declared(name, target, declaration)
        module = getattr(target, "__module__", None) or "__main__"
        importing = sys.modules.get(module)
        if module not in _DECLARED_BY or _DECLARED_BY[module] is not importing:  # first import, or again
            _DECLARED[module], _DECLARED_BY[module] = [], importing
        _DECLARED[module].append(item)
        _active.add_declared(item)
        return target

    return decorate


def load_registry(plugins: list[str] | tuple[str, ...] = ()) -> Registry:
    """The process-wide registry with built-ins, entry points and ``plugins`` loaded."""
    return REGISTRY.load_all(plugins)
