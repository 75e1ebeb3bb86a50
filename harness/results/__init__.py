"""How results are read back: result folders as DataFrames (``read``), reports (``report``),
``attnbench compare`` (``compare``) and verdicts reached again (``rejudge``).

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""
