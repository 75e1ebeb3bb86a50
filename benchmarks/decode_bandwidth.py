"""How close one decode step comes to the machine's memory bandwidth, per cache layout and dtype.

``python benchmarks/decode_bandwidth.py`` times, interleaved in one process (round after round,
each call once per round, the median kept), one decode step of ``split_kv`` and of SDPA (the
suite's baseline) against caches of ``--tokens`` tokens (batch ``--batch``, 32 query / 8 KV
heads, head dim 128 by default), in every layout and dtype asked, beside STREAM's triad over
arrays of 256 MiB each (the ceiling the suite's bandwidth fraction is taken against). For each
it prints the median time, the bytes the step must read over that time (every valid key and
value once, :meth:`attnbench.case.modes.Decode.io_bytes`), that bandwidth's fraction of the
triad's, and paged ÷ contiguous for the same tokens.

It answers, in seconds rather than the ``decode`` suite's hour, the question that suite's
declared ratios ask of ``split_kv``. ``--fused-baseline`` adds ``split_kv[fused]``: split_kv held
to PyTorch's fused flash kernel on every chunk (its only path before it timed the products
against it), interleaved with the rest.
"""

from __future__ import annotations

import argparse
import sys

import torch
from interleaved import Call, medians_ms, prepared

from attnbench import Problem
from attnbench.case.modes import DECODE
from attnbench.plugins.registry import load_registry

TRIAD_ELEMENTS = 64 * 2**20  # float32: 256 MiB an array


def triad() -> Call:
    b, c = torch.ones(TRIAD_ELEMENTS), torch.ones(TRIAD_ELEMENTS)
    a = torch.empty(TRIAD_ELEMENTS)
    return lambda: torch.add(b, c, alpha=3.0, out=a)


def fused_only(problem: Problem) -> Call:
    """``split_kv`` prepared with its paths narrowed to the fused kernel (the choice is made when
    the step is prepared, so the call keeps it)."""
    module = sys.modules[type(load_registry().get("split_kv")).__module__]
    paths = module.PATHS
    module.PATHS = ("fused",)
    try:
        return prepared("split_kv", problem)
    finally:
        module.PATHS = paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--kv-lengths", default="uniform")
    parser.add_argument("--caches", nargs="+", default=["contiguous", "paged:16"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--impls", nargs="+", default=["split_kv", "sdpa"])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--fused-baseline", action="store_true", help="also time split_kv[fused]")
    args = parser.parse_args(argv)
    shape = dict(
        mode="decode", batch=args.batch, heads=args.heads, kv_heads=args.kv_heads, seq_len=1,
        kv_len=args.tokens, head_dim=args.head_dim, causal=True, kv_lengths=args.kv_lengths,
    )  # fmt: skip
    problems: dict[tuple[str, str, str], Problem] = {}
    calls: dict[str, Call] = {"triad": triad()}
    with torch.no_grad():
        for dtype in args.dtypes:
            for cache in args.caches:
                problem = Problem(dtype=dtype, cache=cache, **shape)  # type: ignore[arg-type]
                for name in args.impls:
                    label = f"{name} {cache} {dtype}"
                    problems[(name, cache, dtype)] = problem
                    calls[label] = prepared(name, problem)
                if args.fused_baseline:
                    problems[("split_kv[fused]", cache, dtype)] = problem
                    calls[f"split_kv[fused] {cache} {dtype}"] = fused_only(problem)
        ms = medians_ms({label: [call] for label, call in calls.items()}, args.rounds)
    triad_gbps = 3 * 4 * TRIAD_ELEMENTS / ms["triad"] / 1e6
    head = f"triad {ms['triad']:.1f} ms, {triad_gbps:.1f} GB/s"
    print(f"{head}; batch {args.batch}, {args.kv_lengths}, {args.tokens} tokens")
    for (name, cache, dtype), problem in problems.items():
        label = f"{name} {cache} {dtype}"
        gbps = DECODE.io_bytes(problem) / ms[label] / 1e6
        line = f"{label:38s} {ms[label]:9.2f} ms {gbps:6.2f} GB/s {gbps / triad_gbps:5.2f} of the triad"
        flat = f"{name} contiguous {dtype}"
        if cache != "contiguous" and flat in ms:
            line += f"  {ms[label] / ms[flat]:.2f}x contiguous"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
