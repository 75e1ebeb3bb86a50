"""``attnbench check NAME``: a quick accuracy verdict for one implementation, no timing.

The command a plugin author runs first. It judges the implementation on a small set of
representative cases — full, causal, cross-attention, grouped-query, a long sequence (sampled
rows), a window and a block layout where it declares them — in every dtype it declares, forward
and, where it declares ``backward``, forward+backward with its gradients; or on the cases given
with ``--case``. Each case ends as ``ok``, ``inaccurate`` (with the error against its bound),
``unsupported`` (with its own reason) or ``error``. It runs in this process (no isolation): a
crash ends the command.

Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure``
only.
"""

from __future__ import annotations

import re
import time
import traceback
from dataclasses import dataclass, fields
from typing import Any

from attnbench.case.keys import SPEC
from attnbench.case.modes import FORWARD, FORWARD_BACKWARD
from attnbench.case.problem import Problem
from attnbench.case.status import Status
from attnbench.measure.verify import check
from attnbench.plugins.contract import Implementation

#: The representative shapes; each is combined with every declared dtype and mode.
REPRESENTATIVE: tuple[dict[str, Any], ...] = (
    {"seq_len": 128},
    {"seq_len": 128, "causal": True},
    {"seq_len": 96, "kv_len": 160, "causal": True},
    {"heads": 8, "kv_heads": 2, "seq_len": 128, "causal": True},
    {"seq_len": 1024, "causal": True},
    {"seq_len": 256, "window": 32, "causal": True},
    {"seq_len": 256, "window": 32},
    {"seq_len": 256, "layout": "bigbird:block=32"},
)
#: The case fields a check's case name spells itself (or leaves out: the device, the threads);
#: every other field is shown in its own short form where it is not at its default.
SPELLED = frozenset(
    {"mode", "dtype", "device", "batch", "heads", "kv_heads", "seq_len", "kv_len", "head_dim", "causal", "window",
     "layout", "threads"}
)  # fmt: skip
BASE: dict[str, Any] = {"batch": 2, "heads": 4, "head_dim": 64}
PROBLEM_FIELDS = {f.name: f.type for f in fields(Problem) if f.init and f.name != "threads"}


class CaseSpecError(ValueError):
    """A ``--case`` that does not describe a problem."""


@dataclass(frozen=True)
class Outcome:
    problem: Problem
    status: Status  # ok, inaccurate, unsupported, error
    detail: str
    seconds: float

    @property
    def label(self) -> str:
        p = self.problem
        bits = [p.mode, p.dtype, f"B{p.batch} H{p.heads}" + (f"/{p.kv_heads}" if p.gqa else "")]
        bits.append(f"N{p.seq_len}" + (f"x{p.kv_len}" if p.cross else "") + f" D{p.head_dim}")
        bits += ["causal"] if p.causal else []
        bits += [f"W{p.window}"] if p.window else []
        bits += [p.layout.split(":")[0]] if p.layout != "dense" else []
        row = p.as_dict()
        bits += [
            part
            for key, meta in SPEC.items()
            if key not in SPELLED and meta.short and (part := meta.short(row[key], row))
        ]
        return " ".join(bits)


def parse_case(spec: str) -> dict[str, Any]:
    """``seq_len=512,causal=true,dtype=bfloat16`` → problem fields."""
    out: dict[str, Any] = {}
    # a comma starts an item only before KEY= (a layout holds commas, and a seed= of its own)
    keys = "|".join(k for k in PROBLEM_FIELDS if k != "seed")
    for item in filter(None, (part.strip() for part in re.split(rf",(?=\s*(?:{keys})\s*=)", spec))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or key not in PROBLEM_FIELDS or key == "seed":
            known = ", ".join(k for k in PROBLEM_FIELDS if k != "seed")
            raise CaseSpecError(f"--case {spec!r}: {item!r} is not KEY=VALUE with KEY one of {known}")
        out[key] = _value(key, raw.strip(), spec)
    return out


def _value(key: str, raw: str, spec: str) -> Any:
    kind = str(PROBLEM_FIELDS[key])
    if kind == "bool":
        if raw.lower() not in ("true", "false", "1", "0"):
            raise CaseSpecError(f"--case {spec!r}: {key} must be true or false, not {raw!r}")
        return raw.lower() in ("true", "1")
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise CaseSpecError(f"--case {spec!r}: {key} must be an integer, not {raw!r}") from None
    if kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise CaseSpecError(f"--case {spec!r}: {key} must be a number, not {raw!r}") from None
    return raw


def cases_for(impl: Implementation, given: list[dict[str, Any]] | None = None) -> list[Problem]:
    """The problems to judge: ``given``, or the representative set in every declared dtype and mode."""
    if given:
        try:
            return [Problem(**{**BASE, **fields_}) for fields_ in given]
        except (TypeError, ValueError) as exc:
            raise CaseSpecError(f"--case: {exc}") from None
    dtypes = [d for d in ("float32", "bfloat16", "float16") if d in impl.dtypes] or list(impl.dtypes)[:1]
    modes = [FORWARD.name] + ([FORWARD_BACKWARD.name] if "backward" in impl.features else [])
    devices = [d for d in impl.devices if d == "cpu"] or list(impl.devices)[:1]
    return [
        Problem(**{**BASE, **shape, "dtype": dtype, "mode": mode, "device": devices[0]})
        for mode in modes
        for dtype in dtypes
        for shape in REPRESENTATIVE
    ]


def judge_case(impl: Implementation, problem: Problem, max_rows: int = 128) -> Outcome:
    started = time.perf_counter()
    reason = impl.supports(problem)
    if reason:
        return Outcome(problem, Status.UNSUPPORTED, reason, 0.0)
    try:
        result = check(impl, problem, max_rows=max_rows)
    except Exception as exc:
        text = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return Outcome(problem, Status.ERROR, text, time.perf_counter() - started)
    seconds = time.perf_counter() - started
    if not result.ok:
        return Outcome(problem, Status.INACCURATE, result.failures(), seconds)
    out = result.output
    detail = f"{'+'.join(result.checks)} err {out.max_abs_err:.2g} ≤ {out.bound:.2g}"
    if result.full_rel_err is not None:
        detail += f"; from softmax {result.full_rel_err:.2g}, uniform {result.uniform_rel_err:.2g}"
    if result.note:
        detail += f"; {result.note}"
    return Outcome(problem, Status.OK, detail, seconds)


def run_checks(impl: Implementation, given: list[dict[str, Any]] | None = None) -> list[Outcome]:
    return [judge_case(impl, problem) for problem in cases_for(impl, given)]
