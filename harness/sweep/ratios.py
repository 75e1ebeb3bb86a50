"""Ratios a suite declares: each the question a reader runs the suite to answer, with its bound.

A suite's ``[[ratio]]`` tables name an implementation, a peer and a metric; the report evaluates
each on the run's records and prints the figure, its spread and whether the bound holds::

    [[ratio]]
    name = "sliding_window beats flex"        # what the reader sees
    impl = "sliding_window"
    peer = "flex"                             # default: impl itself (with peer_case changed)
    metric = "speed"                          # speed | memory | slope | bandwidth
    where = { window = 256, seq_len = [4096, 8192, 16384] }   # the impl's cases (any case field)
    peer_case = { window = 0 }                # the peer's case: the impl's with these fields changed
    at_least = 1.0                            # or at_most; neither: the figure is only printed

Metrics, each measured on one run (the records of one machine):

* ``speed`` — the peer's median time ÷ the implementation's, per case: how many times faster the
  implementation is. Its spread is the interval from the quartiles (peer Q1 ÷ impl Q3 to peer Q3 ÷
  impl Q1). Where the peer was the baseline timed interleaved beside the implementation, the
  interleaved samples are used, so the ratio does not carry the machine's drift between pairs.
* ``memory`` — the implementation's peak memory ÷ the peer's, per case.
* ``slope`` — the implementation's fitted time exponent over the matched lengths (log time
  against log N), with its 95% interval, per group of the other case fields; ``peer`` is unused.
  A bounded slope is fitted to the lengths' times chained through paired timings of neighbouring
  lengths where the run has them (:mod:`attnbench.sweep.pairs`).
* ``bandwidth`` — the implementation's bytes per second ÷ the machine's measured memory bandwidth
  (the record's ``bandwidth_fraction``: the bytes the case must move over its median time, against
  the STREAM triad), per case; its spread from the time's quartiles; ``peer`` is unused.

This module parses and validates the tables; :mod:`attnbench.results.report.ratios` evaluates them on
a run's records.

Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and
``attnbench.sweep``; never ``results``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from attnbench.case.keys import CASE_KEYS, SPEC

METRICS = {
    "speed": "the peer's time ÷ the implementation's (× faster)",
    "memory": "the implementation's peak memory ÷ the peer's",
    "slope": "the implementation's fitted time exponent in N",
    "bandwidth": "the implementation's bytes per second ÷ the machine's measured memory bandwidth",
}
#: Metrics of the implementation alone (no peer).
OWN_METRICS = ("slope", "bandwidth")
RATIO_KEYS = {"name", "impl", "peer", "metric", "where", "peer_case", "at_least", "at_most"}


class RatioError(ValueError):
    """A ``[[ratio]]`` table that cannot be evaluated; the message names the key."""


@dataclass(frozen=True)
class Ratio:
    """One declared ratio."""

    name: str
    impl: str
    peer: str
    metric: str
    where: dict[str, list[Any]] = field(default_factory=dict)
    peer_case: dict[str, Any] = field(default_factory=dict)
    at_least: float | None = None
    at_most: float | None = None

    def bound(self) -> str:
        if self.at_least is not None:
            return f"≥ {self.at_least:g}"
        if self.at_most is not None:
            return f"≤ {self.at_most:g}"
        return ""

    def holds(self, value: float) -> bool | None:
        """Whether ``value`` meets the bound (None when there is no bound)."""
        if self.at_least is not None:
            return value >= self.at_least
        if self.at_most is not None:
            return value <= self.at_most
        return None


def parse_ratios(tables: Any, where: str, known: set[str] | None = None) -> list[Ratio]:
    """Validate the ``[[ratio]]`` tables of a suite (``where`` names the file in messages)."""
    if tables is None:
        return []
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise RatioError(f"{where}: ratio must be an array of tables [[ratio]]")
    return [_one(t, f"{where}: ratio[{i}]", known) for i, t in enumerate(tables)]


def _one(table: dict[str, Any], at: str, known: set[str] | None) -> Ratio:
    unknown = sorted(set(table) - RATIO_KEYS)
    if unknown:
        raise RatioError(f"{at}: unknown key {unknown[0]!r}; expected one of {sorted(RATIO_KEYS)}")
    impl = table.get("impl")
    if not isinstance(impl, str) or not impl:
        raise RatioError(f"{at}.impl is required: expected an implementation name")
    peer = table.get("peer", impl)
    for key, name in (("impl", impl), ("peer", peer)):
        if not isinstance(name, str) or (known is not None and name not in known):
            raise RatioError(f"{at}.{key} = {name!r}: expected an implementation of the suite")
    metric = table.get("metric", "speed")
    if metric not in METRICS:
        raise RatioError(f"{at}.metric = {metric!r}: expected one of {', '.join(METRICS)}")
    selected = {key: v if isinstance(v, list) else [v] for key, v in _fields(table, "where", at).items()}
    changed = _fields(table, "peer_case", at)
    for key, value in changed.items():
        if isinstance(value, list):
            raise RatioError(f"{at}.peer_case.{key} = {value!r}: expected one value")
    if metric not in OWN_METRICS and peer == impl and not changed:
        raise RatioError(f"{at}: peer and peer_case are both missing: the implementation against itself is 1")
    bounds = {}
    for key in ("at_least", "at_most"):
        value = table.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise RatioError(f"{at}.{key} = {value!r}: expected a positive number")
        bounds[key] = None if value is None else float(value)
    if bounds["at_least"] is not None and bounds["at_most"] is not None:
        raise RatioError(f"{at}: give at_least or at_most, not both")
    name = table.get("name") or f"{impl} {metric} against {peer}"
    if not isinstance(name, str):
        raise RatioError(f"{at}.name = {name!r}: expected a string")
    return Ratio(name, impl, peer, metric, selected, changed, bounds["at_least"], bounds["at_most"])


def _fields(table: dict[str, Any], key: str, at: str) -> dict[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise RatioError(f"{at}.{key} = {value!r}: expected an inline table of case fields")
    for name, item in value.items():
        if name not in SPEC:
            raise RatioError(f"{at}.{key}.{name}: not a case field; expected one of {', '.join(CASE_KEYS)}")
        for one in item if isinstance(item, list) else [item]:
            if not SPEC[name].takes(one):
                raise RatioError(f"{at}.{key}.{name} has {one!r}: expected {SPEC[name].expected}")
    return dict(value)
