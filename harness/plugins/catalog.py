"""What the runner knows of the implementations without importing a plugin: their declarations
as plain data, described by a worker (:meth:`Catalog.from_description`) or read off a registry
(:meth:`Catalog.of`).

Layer ``plugins``: imports ``attnbench.case`` and ``attnbench.plugins`` only.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from attnbench.plugins.registry import Registry, UnknownImplementationError


@dataclass
class Catalog:
    """What a registry holds, as plain declarations: what the runner knows of the
    implementations without importing any plugin (a worker describes its registry)."""

    declarations: dict[str, dict[str, Any]]
    aliases: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, registry: Registry) -> Catalog:
        return cls({impl.name: impl.declaration() for impl in registry.implementations()}, registry.aliases())

    @classmethod
    def from_description(cls, described: dict[str, Any]) -> Catalog:
        return cls({d["name"]: d for d in described["declarations"]}, dict(described.get("aliases") or {}))

    def names(self) -> list[str]:
        return list(self.declarations)

    def known(self) -> list[str]:
        """Every name a suite or ``--only`` may use: the registered names and their aliases."""
        return [*self.declarations, *self.aliases]

    def canonical(self, name: str) -> str:
        return self.aliases.get(name, name)

    def get(self, name: str) -> dict[str, Any]:
        """The declaration of ``name`` (or of what it aliases); an unknown name raises with suggestions."""
        found = self.declarations.get(self.canonical(name))
        if found is not None:
            return found
        close = difflib.get_close_matches(name, self.known(), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(self.declarations)) or "none"
        raise UnknownImplementationError(f"unknown implementation {name!r}{hint} (known: {known})")
