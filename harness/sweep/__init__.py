"""How a sweep runs: suites and their declared ratios (``suite``, ``ratios``), suites from a
model's config (``models``), the runner and the interface it hands work to executors through
(``runner``, ``jobs``), worker processes (``workers``, ``worker``), where pairs run
(``scheduler``, ``executors``), shards and merging them (``shards``, ``merge``), paired timings
(``pairs``), the calibration cache (``calibration_cache``) and the progress line (``progress``).

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""
