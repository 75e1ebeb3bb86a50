"""Implementations and their registry: the contract a plugin meets (``contract``), the registry
that loads built-ins, entry points and plugin files (``registry``), and the pre-0.2 import name
(``legacy``).

Imports ``attnbench.case`` only (and nothing of ``measure``, ``sweep`` or ``results``).
"""
