"""How one (case, implementation) is measured and judged, inside a worker.

Devices at run time and their clocks (``devices``), timing (``timing``), peak memory
(``memory``), the machine's ceilings (``calibrate``, ``machine``) and its load (``machine_load``),
the call each mode times and judges (``bench``), the accuracy criterion (``accuracy``) and the
verdicts (``verify``), fidelity on probes (``fidelity``), a record's figures (``figures``), the
steps of a case and the record they fill (``steps``, ``records``), the case run itself
(``case_run``) and ``attnbench check`` (``check``).

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""
