"""What the accuracy checks found about libraries' own kernels, stated apart from the rest.

An ``inaccurate`` record of an implementation that calls a library's kernel (PyTorch's SDPA back
ends and FlexAttention, xformers: its declared ``library``) is a finding about that library, not a
planted bug or a plugin's failure: the report lists it with its figures, tensor by tensor — its
error, the plain computation's error in the same dtype, and the bound — so that the reader sees
by how much the kernel misses FlashAttention's criterion.

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from attnbench.case.status import Status
from attnbench.results.report.data import ReportData, case_order, records_of

COLUMNS = ["host", "impl", "library", "case", "tensor", "its_error", "plain_error", "bound", "times_bound"]


def library_findings(data: ReportData) -> pd.DataFrame:
    """One row per tensor that missed its bound, of every inaccurate record of a library's kernel."""
    libraries = {n: str(d.get("library") or "") for n, d in data.declarations.items()}
    bad = data.records[data.records["status"] == Status.INACCURATE]
    rows: list[dict[str, Any]] = []
    for record in records_of(bad):
        library = libraries.get(str(record["impl"]), "")
        if not library:
            continue
        figures = record.get("check_figures")
        for what, err, plain, bound in figures if isinstance(figures, list) else []:
            if err is None or bound is None or not err > bound:
                continue
            rows.append(
                {
                    "host": record["host"],
                    "impl": record["impl"],
                    "library": library,
                    "case": record["case"],
                    "tensor": what,
                    "its_error": err,
                    "plain_error": plain,
                    "bound": bound,
                    "times_bound": err / bound if bound else None,
                }
            )
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    order = {c: i for i, c in enumerate(case_order(data.records))}
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(["host", "impl"], key=lambda s: s if s.name != "case" else s.map(order), kind="stable")
