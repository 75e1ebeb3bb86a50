"""How results are read back: result folders as DataFrames (``read``), reports (``report``),
``attnbench compare`` (``compare``) and verdicts reached again (``rejudge``).

Imports any room below it (``case``, ``plugins``, ``measure``, ``sweep``); the command line
imports it.
"""
