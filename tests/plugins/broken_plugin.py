"""A plugin file for the registry tests that fails on import, as a plugin with a bug would."""

from __future__ import annotations

raise RuntimeError("broken_plugin fails on purpose")
