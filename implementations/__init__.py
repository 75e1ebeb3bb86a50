"""attnbench's built-in attention implementations, one module each.

Each registers through an entry point declared in ``pyproject.toml``, as an installed plugin would.

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""
