"""Suites: TOML files that sweep shapes and hardware, validated before anything runs.

A suite names the implementations, a grid whose every combination is one case, and a budget.
Every user mistake (syntax, unknown key, wrong type, empty axis, value out of range, unknown
implementation, dtype or device) raises :class:`SuiteError` with one sentence naming the file,
the key and what was expected; the command line turns it into exit code 2.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

import itertools
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attnbench.suites as _shipped_suites  # the TOML files
from attnbench.case.keys import CASE_KEYS, SPEC
from attnbench.case.patterns import BlockLayout
from attnbench.case.problem import Problem
from attnbench.measure.devices import canonical, device, present_devices, usable_cores
from attnbench.sweep.ratios import Ratio, RatioError, parse_ratios

SUITES_DIR = Path(_shipped_suites.__file__).resolve().parent


class SuiteError(Exception):
    """A suite that cannot run, with a message naming the file, the key and the fix."""


def expand_device(name: str, present: list[str]) -> list[str]:
    """``auto``: every device present; ``cuda:all``: every GPU present; else the device itself."""
    if name == "auto":
        return present
    if name == "cuda:all":
        return [d for d in present if device(d).kind == "cuda"]
    return [canonical(name)]


BUDGET_KEYS: dict[str, tuple[float, str]] = {
    "timeout_s": (60.0, "seconds per (case, implementation) before the worker is killed"),
    "memory_gib": (8.0, "GiB a worker may add per case before it ends as oom"),
    "min_time_s": (0.2, "seconds of timing per case at least"),
    "max_time_s": (2.0, "seconds of timing per case at most, while the spread stays wide"),
    "min_repeats": (5, "timed samples per case at least"),
    "accuracy_rows": (256, "query rows checked against the float64 reference (a seeded sample)"),
}

SUITE_KEYS: dict[str, tuple[Any, str]] = {
    "name": ("", "a string"),
    "description": ("", "a string"),
    "implementations": ("all", "'all' or a list of implementation names"),
    "baseline": ("sdpa", "an implementation name, or '' for none"),
    "stop_on_failure": (
        True,
        "a boolean: stop growing the sequence for an implementation after a timeout, oom or crash",
    ),
    "seed": (0, "an integer seed for the inputs"),
}


#: A case of a suite is a :class:`~attnbench.case.problem.Problem` (its thread count included).
Case = Problem


@dataclass(frozen=True)
class Suite:
    """A validated suite."""

    name: str
    description: str
    implementations: tuple[str, ...] | str
    baseline: str
    grids: list[dict[str, Any]]  # each: the axes, "implementations" and "baseline" (None: the suite's)
    budget: dict[str, float]
    path: str
    text: str
    stop_on_failure: bool = True
    seed: int = 0
    ratios: list[Ratio] = field(default_factory=list)  # the [[ratio]] tables: what the report states
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def shipped(self) -> bool:
        """Whether this is one of attnbench's own suites (plugins the user brings join its grids)."""
        try:
            return Path(self.path).resolve().parent == SUITES_DIR
        except OSError:
            return False

    def impl_names(self, available: Iterable[str]) -> list[str]:
        """Every implementation the suite names, in order ("all": every one available)."""
        names: list[str] = []
        for grid in self.grids:
            names += self._grid_impls(grid, available)
        return _unique(names)

    def _grid_impls(self, grid: dict[str, Any], available: Iterable[str]) -> list[str]:
        chosen = grid.get("implementations") or self.implementations
        return list(available) if chosen == "all" else list(chosen)

    def pairs(
        self,
        available: Iterable[str],
        devices_present: Iterable[str] | None = None,
        cores: int | None = None,
        *,
        extra: Iterable[str] = (),
        admits: Mapping[str, Callable[[Case], bool]] | None = None,
    ) -> list[tuple[Case, str]]:
        """Every (case, implementation) the suite runs, each once, grid by grid. ``extra``
        implementations (plugins the user brought) join every grid, also one that names its own
        implementations, on the cases ``admits[name]`` accepts."""
        names, added, admits = list(available), list(extra), admits or {}
        out: list[tuple[Case, str]] = []
        for grid in self.grids:
            impls = _unique([*self._grid_impls(grid, names), *added])
            for case in expand_grid(grid, devices_present, cores, self.seed):
                for impl in impls:
                    if impl in admits and impl not in self._grid_impls(grid, names) and not admits[impl](case):
                        continue
                    out.append((case, impl))
        return _unique(out)

    def baselines(self, devices_present: Iterable[str] | None = None, cores: int | None = None) -> dict[Case, str]:
        """Each case's baseline: that of the first grid holding the case, where the grid names its
        own (``baseline = ""`` where timing one beside every pair would cost more than the pair,
        such as quadratic SDPA beside a linear-time kernel at 128K tokens), else the suite's."""
        present = list(devices_present) if devices_present is not None else None
        out: dict[Case, str] = {}
        for grid in self.grids:
            own = grid.get("baseline")
            for case in expand_grid(grid, present, cores, self.seed):
                out.setdefault(case, self.baseline if own is None else own)
        return out

    def cases(self, devices_present: Iterable[str] | None = None, cores: int | None = None) -> list[Case]:
        """Every case of every grid, with 'auto' expanded for this machine."""
        return _unique(case for grid in self.grids for case in expand_grid(grid, devices_present, cores, self.seed))


def expand_grid(
    g: dict[str, Any], devices_present: Iterable[str] | None = None, cores: int | None = None, seed: int = 0
) -> list[Case]:
    """Every combination of one grid's axes (the case fields), with the machine words expanded
    (``auto``, ``cuda:all``). The sequence lengths vary fastest, ascending, so a sweep grows
    within each group."""
    present = list(devices_present) if devices_present is not None else list(present_devices())
    cores = cores or usable_cores()
    words: dict[str, Callable[[Any], list[Any]]] = {
        "device": lambda dev: expand_device(dev, present),
        "dtype": lambda dt: ["float32", "bfloat16", "float16"] if dt == "auto" else [dt],
        "threads": lambda th: _thread_ladder(cores) if th == "auto" else [th],
    }
    axes: dict[str, list[Any]] = {}
    for key in CASE_KEYS:
        values = g[key] or [0]  # an empty derived axis (kv_heads, kv_len): "same as"
        values = _unique(x for v in values for x in (words[key](v) if key in words else [v]))
        axes[key] = sorted(values) if key in ("seq_len", "kv_len") else values
    order = [k for k in CASE_KEYS if k not in ("kv_len", "seq_len")] + ["kv_len", "seq_len"]
    out = []
    for combo in itertools.product(*(axes[k] for k in order)):
        fields = dict(zip(order, combo, strict=True))
        if canonical(fields["device"]) != "cpu":
            fields["threads"] = 0  # GPU cases: the host's threads are not a parameter
        out.append(Problem(**fields, seed=seed))
    return _unique(out)


def _unique(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def _thread_ladder(cores: int) -> list[int]:
    ladder = [1]
    while ladder[-1] * 2 <= cores:
        ladder.append(ladder[-1] * 2)
    return [*ladder, cores] if ladder[-1] != cores else ladder


def resolve_suite_path(name_or_path: str) -> Path:
    """A suite name in ``suites/`` (``quick``) or a path to a TOML file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or os.sep in name_or_path:
        if not candidate.is_file():
            raise SuiteError(f"{name_or_path}: no such suite file")
        return candidate
    path = SUITES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SUITES_DIR.glob("*.toml")))
        raise SuiteError(f"unknown suite {name_or_path!r}: expected a name in {SUITES_DIR} ({known}) or a path")
    return path


def load_suite(name_or_path: str, known_impls: Iterable[str] | None = None) -> Suite:
    """Read and validate a suite; unknown implementations are errors when ``known_impls`` is given."""
    path = resolve_suite_path(name_or_path)
    text = path.read_text(encoding="utf-8")
    return parse_suite(text, str(path), known_impls)


def parse_suite(text: str, where: str, known_impls: Iterable[str] | None = None) -> Suite:
    """Validate suite TOML ``text``; ``where`` names the file in messages."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{where}: TOML syntax error: {exc}") from None
    _no_unknown(raw, {"suite", "grid", "budget", "ratio"}, where, "")
    for table in ("suite", "budget"):
        if not isinstance(raw.get(table, {}), dict):
            raise SuiteError(f"{where}: [{table}] must be a table")
    suite_t, budget_t = raw.get("suite", {}), raw.get("budget", {})
    _no_unknown(suite_t, set(SUITE_KEYS), where, "suite.")
    _no_unknown(budget_t, set(BUDGET_KEYS), where, "budget.")
    impls = suite_t.get("implementations")
    if impls is None:
        raise SuiteError(f"{where}: suite.implementations is required: expected {SUITE_KEYS['implementations'][1]}")
    impls = _implementations(impls, where, known_impls, "suite.implementations")
    grids = [_grid(table, f"grid{'' if len(tables) == 1 else f'[{i}]'}", where, known_impls)
             for tables in [_grid_tables(raw.get("grid", {}), where)] for i, table in enumerate(tables)]  # fmt: skip
    for i, grid in enumerate(grids):
        try:
            expand_grid(grid)
        except ValueError as exc:  # a combination that is no case (decode with a layout, a cache outside decode)
            raise SuiteError(f"{where}: grid{'' if len(grids) == 1 else f'[{i}]'}: {exc}") from None
    budget = {key: _budget_value(budget_t, key, where) for key in BUDGET_KEYS}
    baseline = _baseline(suite_t, where, known_impls, "suite.")
    try:
        ratios = parse_ratios(raw.get("ratio"), where, None if known_impls is None else set(known_impls))
    except RatioError as exc:
        raise SuiteError(str(exc)) from None
    return Suite(
        name=_typed(suite_t, "name", str, where, "suite.") or Path(where).stem,
        description=_typed(suite_t, "description", str, where, "suite."),
        implementations=impls,
        baseline=baseline,
        grids=grids,
        budget=budget,
        path=where,
        text=text,
        stop_on_failure=_typed(suite_t, "stop_on_failure", bool, where, "suite."),
        seed=_typed(suite_t, "seed", int, where, "suite."),
        ratios=ratios,
        raw=raw,
    )


def _no_unknown(table: dict[str, Any], allowed: set[str], where: str, prefix: str) -> None:
    for key in table:
        if key not in allowed:
            hint = _did_you_mean(key, allowed)
            raise SuiteError(f"{where}: unknown key {prefix}{key}{hint}; expected one of {sorted(allowed)}")


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _typed(table: dict[str, Any], key: str, kind: type, where: str, prefix: str) -> Any:
    default, expected = SUITE_KEYS[key]
    value = table.get(key, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SuiteError(f"{where}: {prefix}{key} = {value!r}: expected {expected}")
    return value


def _baseline(table: dict[str, Any], where: str, known: Iterable[str] | None, prefix: str) -> str:
    baseline = _typed(table, "baseline", str, where, prefix)
    if known is not None and baseline and baseline not in set(known):
        hint = _did_you_mean(baseline, known)
        raise SuiteError(f"{where}: {prefix}baseline: unknown implementation {baseline!r}{hint}")
    return str(baseline)


def _grid_tables(value: Any, where: str) -> list[dict[str, Any]]:
    """``[grid]`` is one table; ``[[grid]]`` is several, each its own product of axes."""
    tables = value if isinstance(value, list) else [value]
    if not tables or not all(isinstance(t, dict) for t in tables):
        raise SuiteError(f"{where}: grid must be a table [grid] or an array of tables [[grid]]")
    return tables


def _grid(table: dict[str, Any], name: str, where: str, known: Iterable[str] | None) -> dict[str, Any]:
    _no_unknown(table, {*SPEC, "implementations", "baseline"}, where, f"{name}.")
    grid: dict[str, Any] = {key: _grid_axis(table, key, where, name) for key in SPEC}
    for key, meta in SPEC.items():
        if meta.grid is None and not grid[key]:
            raise SuiteError(f"{where}: {name}.{key} is required: expected a list of {meta.expected}")
    _check_combinations(grid, where, name)
    grid["implementations"] = None
    if "implementations" in table:
        grid["implementations"] = _implementations(table["implementations"], where, known, f"{name}.implementations")
    grid["baseline"] = None
    if "baseline" in table:
        grid["baseline"] = _baseline(table, where, known, f"{name}.")
    return grid


def _grid_axis(grid: dict[str, Any], key: str, where: str, name: str = "grid") -> list[Any]:
    meta = SPEC[key]
    expected = f"a list of {meta.expected}"
    value = grid.get(key, [] if meta.grid is None else meta.grid)
    if isinstance(value, str) and value in meta.auto:
        return [value]
    if not isinstance(value, list):
        value = [value] if meta.takes(value) else value
    if not isinstance(value, list):
        raise SuiteError(f"{where}: {name}.{key} = {value!r}: expected {expected}")
    if not value and not meta.empty_ok and meta.grid is not None:
        raise SuiteError(f"{where}: {name}.{key} is empty: expected {expected}")
    for item in value:
        if item in meta.auto:
            continue
        wrong_type = not meta.takes(item)
        if wrong_type or (meta.check is not None and not meta.check(item)):
            raise SuiteError(f"{where}: {name}.{key} has {item!r}: expected {expected}{_why(key, item)}")
    return _unique(value)


def _why(key: str, item: Any) -> str:
    """A value's own complaint, where it has one (a block layout's bad parameter)."""
    if key == "layout" and isinstance(item, str) and item != "dense":
        try:
            BlockLayout.parse(item)
        except ValueError as exc:
            return f" ({exc})"
    return ""


def _check_combinations(grid: dict[str, list[Any]], where: str, name: str) -> None:
    for heads, kvh in itertools.product(grid["heads"], grid["kv_heads"]):
        if heads % kvh:
            raise SuiteError(f"{where}: {name}.kv_heads has {kvh}, which does not divide heads = {heads}")


def _budget_value(budget: dict[str, Any], key: str, where: str) -> float:
    default, expected = BUDGET_KEYS[key]
    value = budget.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise SuiteError(f"{where}: budget.{key} = {value!r}: expected a positive number ({expected})")
    return value


def _implementations(value: Any, where: str, known: Iterable[str] | None, key: str) -> tuple[str, ...] | str:
    if value == "all":
        return "all"
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise SuiteError(f"{where}: {key} = {value!r}: expected {SUITE_KEYS['implementations'][1]}")
    if known is not None:
        known_set = set(known)
        for name in value:
            if name not in known_set:
                raise SuiteError(f"{where}: {key}: unknown implementation {name!r}{_did_you_mean(name, known_set)}")
    return tuple(_unique(value))
