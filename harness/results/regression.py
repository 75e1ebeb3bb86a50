"""Whether one (case, implementation) pair got slower or faster between two runs, and for real.

The statistics and the verdict of :mod:`attnbench.results.compare` for a single pair (see that
module for the method and the measurements behind it): the ratio of medians, Mann–Whitney U on
the raw samples with an alpha its sample counts allow, the same against a reference timed within
both runs beside the pair (the interleaved baseline, else the machine probe), and the load each
run was timed under.

Layer ``results``: imports any room below it; only the command line and the public API import
it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from attnbench.case.keys import group_label

ALPHA_STRICT = 0.002  # asv's threshold
#: The share of the cores' time other processes may take while a pair is timed before its change
#: cannot be told from the load (a quiet two-core machine reads under 0.1; two spinning
#: processes beside a run, about 0.5).
LOAD_LIMIT = 0.25
ALPHA_LOOSE = 0.01
#: The least change a pair judged without an interleaved baseline (the baseline's own pairs, a
#: run with none) must show to be called *slower* or *faster*; smaller moves beyond the threshold
#: are *uncertain*. The same SDPA call, unchanged, measured on this project's two-core VM in
#: eight runs made one after another on a quiet machine: 2.90-3.40 ms at N=512 (×1.17 between
#: two runs; against the matrix-product probe timed beside it, ×1.10), and ×1.18 in a CI run
#: while the probe stayed within 10%. A kernel's speed moves between runs with what the probe
#: does not exercise (the shared last-level cache, memory placement), and samples taken within
#: one run cannot show it (Mann–Whitney gave p=1e-24 for that ×1.17).
PROBE_ONLY_MARGIN_PCT = 25.0
Verdict = Literal["slower", "faster", "same", "uncertain"]


def p_floor(n: int, m: int) -> float:
    """The smallest two-sided p-value a Mann–Whitney U test can give with ``n`` and ``m`` samples."""
    if n < 1 or m < 1:
        return 1.0
    return min(1.0, 2.0 / math.comb(n + m, n))


def choose_alpha(n: int, m: int) -> float | None:
    """0.002 where the sample counts allow it, else 0.01, else None (too few samples to test)."""
    floor = p_floor(n, m)
    if floor < ALPHA_STRICT:
        return ALPHA_STRICT
    if floor < ALPHA_LOOSE:
        return ALPHA_LOOSE
    return None


def mann_whitney(a: list[float], b: list[float]) -> float:
    """Two-sided Mann–Whitney U p-value; 1.0 when undefined (identical constant samples)."""
    if not a or not b:
        return 1.0
    from scipy import stats  # here, not at the top: importing it costs 1-3 s a run may not need

    p = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return 1.0 if math.isnan(p) else p


@dataclass(frozen=True)
class Relative:
    """A pair's change measured against one within-run reference."""

    reference: str  # "probe matmul float32", "baseline sdpa"
    ratio: float  # (new / its reference) / (base / its reference)
    p_value: float | None
    verdict: Verdict

    def text(self) -> str:
        p = "" if self.p_value is None else f", p={self.p_value:.2g}"
        return f"{self.reference} ×{self.ratio:.2f} ({self.verdict}{p})"


@dataclass(frozen=True)
class PairComparison:
    """One (case, implementation) present and ok in both runs."""

    impl: str
    case: str
    seq_len: int
    base_ms: float
    new_ms: float
    ratio: float  # new / base: above 1 is slower
    p_value: float | None
    alpha: float | None
    n_base: int
    n_new: int
    relative: tuple[Relative, ...] = ()  # against the within-run reference both runs carry (none or one)
    verdict: Verdict = "same"
    note: str = ""
    loaded: str = ""  # "48% in NEW": the load that turned a would-be verdict into uncertain

    @property
    def change_pct(self) -> float:
        return (self.ratio - 1.0) * 100.0


def case_name(row: dict[str, Any]) -> str:
    """``forward · fp32 · cpu · B1 H8 D64 · full · N=1024 · 2 threads``."""
    g = {**row, "kv_rel": "self" if row["kv_len"] == row["seq_len"] else str(row["kv_len"])}
    threads = f" · {row['threads']} threads" if row.get("threads") else ""
    return f"{group_label(g)} · N={row['seq_len']}{threads}"


def _samples(row: dict[str, Any], name: str) -> list[float]:
    values = row.get(name)
    if isinstance(values, list | tuple | np.ndarray):
        return [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return []


def _probe_kind(label: str) -> str:
    """``matmul float32 n=512`` → ``matmul float32``; ``triad 12 MiB`` → ``triad``."""
    if label.startswith("matmul "):
        return label.rsplit(" n=", 1)[0]
    return label.split(" ", 1)[0]


def references(row: dict[str, Any]) -> dict[str, list[float]]:
    """A record's within-run references and their per-call cost, comparable across runs, in order
    of preference: the interleaved baseline's milliseconds (not for the baseline's own record),
    then the machine probe's milliseconds per unit of its work (when the record carries the work,
    else per call of that exact probe)."""
    out: dict[str, list[float]] = {}
    base_ms, baseline = _samples(row, "baseline_samples_ms"), str(row.get("baseline") or "")
    if base_ms and baseline and baseline != row.get("impl"):
        out[f"baseline {baseline}"] = base_ms
    probe_ms, label = _samples(row, "machine_probe_ms"), str(row.get("machine_probe") or "")
    if probe_ms and label:
        work = row.get("machine_probe_work")
        if isinstance(work, int | float) and work > 0:
            out[f"probe {_probe_kind(label)}"] = [ms / float(work) for ms in probe_ms]
        else:
            out[f"probe {label}"] = probe_ms
    return out


def _relative(own: list[float], reference: list[float]) -> list[float]:
    """Per-sample ratios impl / reference; paired when both lists have one sample per round."""
    if not own or not reference:
        return []
    if len(own) == len(reference):
        return [a / b for a, b in zip(own, reference, strict=True) if b > 0]
    mid = float(np.median(reference))
    return [a / mid for a in own] if mid > 0 else []


def _judge(ratio: float, p: float | None, alpha: float | None, limit: float) -> Verdict:
    beyond = ratio > limit or ratio < 1.0 / limit
    if not beyond:
        return "same"
    if alpha is None or p is None:
        return "uncertain"
    if p >= alpha:
        return "same"
    return "slower" if ratio > 1.0 else "faster"


def _relatives(base: dict[str, Any], new: dict[str, Any], limit: float) -> list[Relative]:
    """The pair's change against the first reference (see :func:`references`) both runs carry."""
    a, b = _samples(base, "samples_ms"), _samples(new, "samples_ms")
    refs_a, refs_b = references(base), references(new)
    out: list[Relative] = []
    for name in [n for n in refs_a if n in refs_b][:1]:
        ra, rb = _relative(a, refs_a[name]), _relative(b, refs_b[name])
        if not ra or not rb:
            continue
        ratio = float(np.median(rb)) / float(np.median(ra))
        alpha = choose_alpha(len(ra), len(rb))
        p = mann_whitney(ra, rb) if alpha is not None else None
        out.append(Relative(name, ratio, p, _judge(ratio, p, alpha, limit)))
    return out


def _probe_moved(relative: list[Relative], ratio: float, limit: float) -> bool:
    """Whether the pair's only reference is the machine probe and the probe itself moved beyond
    the threshold, either way. The probe is other work (a matrix product or a memory sweep of a
    fixed size): under load, a short or multi-threaded call can lose several times more, or less,
    than it does. Measured on this project's 2-core machine: two spinning processes slowed the
    probe ×1.5 and a 0.5 ms SDPA call ×3.1 in one run; the probe ×37-74 against kernels ×1.3-2 in
    another; and with a long run beside both runs, the probe ran 3× *faster* in the loaded run
    while the SDPA call ran ×1.5 slower. So a probe that moved says the machine changed, never
    by how much this pair should have."""
    if not relative or not relative[0].reference.startswith("probe"):
        return False
    moved = ratio / relative[0].ratio
    return moved > limit or moved < 1.0 / limit


def _within_drift(relative: list[Relative], ratio: float) -> bool:
    """Whether a pair with no interleaved baseline to stand against moved less, in absolute time
    or against the probe, than :data:`PROBE_ONLY_MARGIN_PCT`."""
    if relative and relative[0].reference.startswith("baseline"):
        return False
    margin = 1.0 + PROBE_ONLY_MARGIN_PCT / 100.0
    moves = [ratio] + [r.ratio for r in relative]
    return any(1.0 / margin < m < margin for m in moves)


def machine_load(row: dict[str, Any]) -> float | None:
    """The load a record was timed under (None when the record does not say)."""
    value = row.get("machine_load")
    return float(value) if isinstance(value, int | float) and math.isfinite(float(value)) else None


def _loaded(base: dict[str, Any], new: dict[str, Any]) -> str:
    """``"48% in NEW"`` where either run timed the pair under more than :data:`LOAD_LIMIT` of load."""
    said = [
        f"{load:.0%} in {which}"
        for which, row in (("BASE", base), ("NEW", new))
        if (load := machine_load(row)) is not None and load > LOAD_LIMIT
    ]
    return " and ".join(said)


def compare_pair(base: dict[str, Any], new: dict[str, Any], threshold_pct: float) -> PairComparison:
    """Compare one pair that is ok in both runs."""
    limit = 1.0 + threshold_pct / 100.0
    a, b = _samples(base, "samples_ms"), _samples(new, "samples_ms")
    base_ms = float(np.median(a)) if a else float(base["time_ms"])
    new_ms = float(np.median(b)) if b else float(new["time_ms"])
    ratio = new_ms / base_ms if base_ms > 0 else math.inf
    alpha = choose_alpha(len(a), len(b))
    p = mann_whitney(a, b) if alpha is not None else None
    verdict = _judge(ratio, p, alpha, limit)
    relative = _relatives(base, new, limit)
    note = ""
    if alpha is None and verdict == "uncertain":
        note = f"too few samples ({len(a)} and {len(b)}) for a significant test"
    disagree = [r for r in relative if r.verdict != verdict]
    if verdict in ("slower", "faster") and disagree:
        moved = "; ".join(
            f"the {r.reference} moved ×{ratio / r.ratio:.2f}, relative to it ×{r.ratio:.2f}" for r in disagree
        )
        opposite = "faster" if verdict == "slower" else "slower"
        if any(r.verdict == opposite for r in disagree):
            verdict = "uncertain"
            note = f"{moved}: the load struck the reference and the pair unevenly; rerun on a quiet machine"
        else:
            verdict = "same"
            note = f"{moved}: the machine, not the implementation"
    elif verdict in ("slower", "faster") and _probe_moved(relative, ratio, limit):
        r = relative[0]
        verdict = "uncertain"
        note = (
            f"the {r.reference} moved ×{ratio / r.ratio:.2f} and the pair ×{ratio:.2f}: the machine's load changed, "
            "and a probe of other work cannot say how much load slows this one; rerun on a quiet machine"
        )
    elif verdict == "same":
        moved_alone = [r for r in relative if r.verdict in ("slower", "faster")]
        if moved_alone:
            note = "; ".join(f"relative to the {r.reference} ×{r.ratio:.2f} ({r.verdict})" for r in moved_alone)
            note += ", but the absolute time did not move"
    if verdict in ("slower", "faster") and _within_drift(relative, ratio):
        against = f", ×{relative[0].ratio:.2f} against the {relative[0].reference}" if relative else ""
        verdict = "uncertain"
        note = (
            f"timed without an interleaved baseline: ×{ratio:.2f}{against} is within the"
            f" ±{PROBE_ONLY_MARGIN_PCT:g}% by which an unchanged kernel's time moves between runs"
            " while the probe does not; time it beside a baseline to tell a change this small"
        )
    loaded = _loaded(base, new) if verdict in ("slower", "faster") else ""
    if loaded:
        verdict = "uncertain"
        note = (
            f"other processes took {loaded} of the cores' time while it was timed: under load a call and the"
            " reference timed beside it slow unevenly; rerun on a quiet machine"
        )
    return PairComparison(
        str(new["impl"]),
        case_name(new),
        int(new["seq_len"]),
        base_ms,
        new_ms,
        ratio,
        p,
        alpha,
        len(a),
        len(b),
        tuple(relative),
        verdict,
        note,
        loaded,
    )


