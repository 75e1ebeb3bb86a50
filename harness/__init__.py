"""attnbench: benchmark and compare attention implementations.

``from attnbench import register`` is the plugin API (see :mod:`attnbench.api`). The folder
``harness/`` of a checkout is this package; imported by its folder name (the pre-0.2 import
name), it becomes an alias of ``attnbench`` with a deprecation warning.

Layer ``top``: may import any room.
"""

from __future__ import annotations

from typing import Any

#: The plugin API, read from :mod:`attnbench.api` on first use (PyTorch is imported then, not by
#: ``import attnbench``: the command starts its worker before importing it). A test holds this
#: list equal to ``attnbench.api.__all__``.
__all__ = [
    "REGISTRY", "Availability", "BlockLayout", "FunctionImplementation", "Growth", "Implementation", "Pattern",
    "Problem", "Registry", "__version__", "load_registry", "load_results", "register",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in __all__:
        from attnbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'attnbench' has no attribute {name!r}")


if __name__ == "attnbench":
    from attnbench.plugins.legacy import install as _install_legacy_alias

    _install_legacy_alias()
else:  # imported as "harness" from a checkout
    from attnbench.plugins.legacy import become_alias as _become_alias

    _become_alias(__name__)
