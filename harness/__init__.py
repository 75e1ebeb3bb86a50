"""attnbench: benchmark and compare attention implementations.

``from attnbench import register`` is the plugin API (see :mod:`attnbench.api`). The folder
``harness/`` of a checkout is this package; imported by its folder name (the pre-0.2 import
name), it becomes an alias of ``attnbench`` with a deprecation warning.

Layer ``top``: may import any room.
"""

from __future__ import annotations

if __name__ == "attnbench":
    from attnbench.api import *  # noqa: F403
    from attnbench.api import __all__, __version__  # noqa: F401
    from attnbench.plugins.legacy import install as _install_legacy_alias

    _install_legacy_alias()
else:  # imported as "harness" from a checkout
    from attnbench.plugins.legacy import become_alias as _become_alias

    _become_alias(__name__)
