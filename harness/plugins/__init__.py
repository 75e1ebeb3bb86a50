"""Implementations and their registry: the contract a plugin meets (``contract``), the registry
that loads built-ins, entry points and plugin files (``registry``), and the pre-0.2 import name
(``legacy``).

Layer ``plugins``: imports ``attnbench.case`` and ``attnbench.plugins`` only.
"""
