"""Does a neighbouring call change the next one's time, or does the machine?

``python benchmarks/neighbour.py sliding_window --seq-len 1024 --window 256`` times one
implementation on one causal case two ways, in one process, block after block so that the
machine's drift falls on both alike:

* ``alone``: the implementation's calls one after another;
* ``beside BASELINE``: each call followed by one of the baseline and one of a small matrix
  product (the harness's machine probe), as a sweep times a pair.

It prints each way's median over its blocks and their ratio (what the neighbour costs). Then, with
``--processes K``, it starts K fresh processes that each time the implementation alone and prints
each one's median and fastest call: how far the same code's time moves from one process, and one
stretch of seconds, to the next.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from interleaved import Call, prepared

from attnbench import Problem


def timed_ms(call: Call) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def block(impl: Call, neighbours: list[Call], calls: int) -> list[float]:
    """``calls`` timed calls of ``impl``, each followed by every neighbour once (not timed)."""
    out = []
    for _ in range(calls):
        out.append(timed_ms(impl))
        for call in neighbours:
            call()
    return out


def problem(args: argparse.Namespace) -> Problem:
    return Problem(heads=args.heads, seq_len=args.seq_len, head_dim=args.head_dim, causal=True, window=args.window)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("impl")
    parser.add_argument("--baseline", default="sdpa")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=6, help="blocks of each way, alternating")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per block")
    parser.add_argument("--processes", type=int, default=0, help="fresh processes timing it alone")
    parser.add_argument("--alone-only", action="store_true", help=argparse.SUPPRESS)  # one fresh process's part
    args = parser.parse_args(argv)
    if min(args.blocks, args.calls) < 1 or args.processes < 0:
        parser.error("--blocks and --calls must be at least 1, --processes at least 0")
    impl = prepared(args.impl, problem(args))
    impl()  # first call: compilation, first-touch allocation
    if args.alone_only:
        times = [t for _ in range(args.blocks) for t in block(impl, [], args.calls)]
        print(f"{statistics.median(times):.3f} {min(times):.3f}")
        return 0
    base = prepared(args.baseline, problem(args))
    x = torch.randn(256, 256)  # [256, 256] the probe's operand
    neighbours: list[Call] = [base, lambda: x @ x]
    for call in neighbours:
        call()
    ways: dict[str, list[float]] = {"alone": [], f"beside {args.baseline}": []}
    for _ in range(args.blocks):
        ways["alone"].append(statistics.median(block(impl, [], args.calls)))
        ways[f"beside {args.baseline}"].append(statistics.median(block(impl, neighbours, args.calls)))
    medians = {way: statistics.median(ms) for way, ms in ways.items()}
    for way, ms in ways.items():
        print(f"{args.impl} {way:<20} {medians[way]:8.3f} ms  (blocks {min(ms):.3f}-{max(ms):.3f})")
    ratio = medians[f"beside {args.baseline}"] / medians["alone"]
    print(f"beside {args.baseline} / alone: {ratio:.3f}")
    if args.processes:
        cmd = [sys.executable, str(Path(__file__).resolve()), args.impl, "--alone-only"]
        for flag in ("seq_len", "window", "heads", "head_dim", "blocks", "calls"):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        found = []
        for i in range(args.processes):
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
            median, fastest = float(out[0]), float(out[1])
            found.append((median, fastest))
            print(f"process {i + 1}: median {median:.3f} ms, fastest {fastest:.3f} ms")
        medians_p, fastest_p = [m for m, _ in found], [f for _, f in found]
        print(
            f"{args.processes} processes alone: medians {min(medians_p):.3f}-{max(medians_p):.3f} ms"
            f" (×{max(medians_p) / min(medians_p):.2f}), fastest calls {min(fastest_p):.3f}-{max(fastest_p):.3f} ms"
            f" (×{max(fastest_p) / min(fastest_p):.2f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
