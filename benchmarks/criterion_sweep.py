"""Does the accuracy criterion fire on correct kernels, and does it catch planted bugs?

``python benchmarks/criterion_sweep.py --out sweep.jsonl`` judges PyTorch's SDPA (its own back-end
choice) and its math back end with attnbench's check (:func:`attnbench.measure.verify.check`: the timed
call scrambled, then judged on 256 sampled rows against the float64 reference) over seeds ×
bfloat16 and float16 × sequence lengths × full and causal × forward and forward+backward, and the
planted bugs beside them: a softmax scale 5% too large (forward, N = 8192) and a key gradient 5%
too large (backward, N = 4096). One JSON line per check: the case, each tensor's error, the plain
computation's error and the bound, and whether it passed; ``--summary FILE`` prints the counts.

The lengths' head counts are chosen so that a check takes seconds on a two-core CPU without
bfloat16 matrix units (where PyTorch's math back end multiplies bfloat16 at about 1 GFLOP/s):
``--heads`` gives them per length.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnbench import Implementation, Problem
from attnbench.measure.verify import check
from attnbench.plugins.registry import load_registry

Tensor = torch.Tensor


class _Planted(Implementation):
    """SDPA on its math back end with one planted bug."""

    devices = ("cpu",)
    features = frozenset({"causal", "gqa", "cross", "backward"})
    scale_factor = 1.0
    dk_factor = 1.0

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        if k.requires_grad and self.dk_factor != 1.0:
            k = k * 1.0
            k.register_hook(lambda g: g * self.dk_factor)
        scale = problem.scale * self.scale_factor
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, is_causal=problem.causal, scale=scale)


class Scale5(_Planted):
    scale_factor = 1.05


class KeyGradient5(_Planted):
    dk_factor = 1.05


def cases(args: argparse.Namespace) -> Iterator[tuple[str, Implementation, Problem]]:
    registry = load_registry()
    heads = dict(zip(args.lengths, args.heads, strict=True))
    for n in args.lengths:
        for dtype in args.dtypes:
            for causal in (mask == "causal" for mask in args.masks):
                for mode in ("forward", "forward_backward"):
                    for seed in range(args.seeds):
                        problem = Problem(
                            batch=1, heads=heads[n], seq_len=n, head_dim=64, dtype=dtype, causal=causal, mode=mode,
                            seed=seed,
                        )  # fmt: skip
                        for name in args.impls:
                            yield name, registry.get(name), problem
    if not args.planted:
        return
    for dtype in ("bfloat16", "float16"):
        for causal in (False, True):
            yield "planted: scale 5%", Scale5(), Problem(heads=8, seq_len=8192, head_dim=64, dtype=dtype, causal=causal)
    for dtype in ("float32", "bfloat16", "float16"):
        for causal in (False, True):
            problem = Problem(heads=8, seq_len=4096, head_dim=64, dtype=dtype, causal=causal, mode="backward")
            yield "planted: dk 5%", KeyGradient5(), problem


def summary(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = []
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["impl"], r["seq_len"], r["heads"], r["dtype"], r["causal"], r["mode"]), []).append(r)
    for key, sub in sorted(groups.items(), key=lambda kv: [str(x) for x in kv[0]]):
        flagged = sum(not r["ok"] for r in sub)
        worst = max(r["worst_ratio"] for r in sub)
        out.append(
            f"{key[0]:<18} N={key[1]:<6} H={key[2]:<2} {key[3]:<9} {'causal' if key[4] else 'full':<6} {key[5]:<16}"
            f" {len(sub):>3} checks  {flagged:>3} flagged  largest error/bound {worst:.3f}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="append one JSON line per check here")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--heads", type=int, nargs="+", default=[8, 2, 1])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    parser.add_argument("--impls", nargs="+", default=["sdpa", "sdpa_math"])
    parser.add_argument("--masks", nargs="+", choices=["full", "causal"], default=["full", "causal"])
    parser.add_argument(
        "--no-planted", dest="planted", action="store_false", help="skip the planted bugs that end the sweep"
    )
    parser.add_argument("--summary", type=Path, help="print the counts of a file written before, and stop")
    args = parser.parse_args(argv)
    if args.summary:
        print(summary(args.summary))
        return 0
    if args.out is None:
        parser.error("give --out FILE (or --summary FILE)")
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["impl"], r["seq_len"], r["heads"], r["dtype"], r["causal"], r["mode"], r["seed"]))
    with args.out.open("a") as fh:
        for name, impl, problem in cases(args):
            key = (name, problem.seq_len, problem.heads, problem.dtype, problem.causal, problem.mode, problem.seed)
            if key in done:
                continue
            started = time.perf_counter()
            result = check(impl, problem, max_rows=256)
            line = {
                "impl": name, "seq_len": problem.seq_len, "heads": problem.heads, "dtype": problem.dtype,
                "causal": problem.causal, "mode": problem.mode, "seed": problem.seed, "ok": result.ok,
                "worst_ratio": max(v.max_abs_err / v.bound for v in result.verdicts if v.bound > 0),
                "figures": result.figures(), "seconds": round(time.perf_counter() - started, 2),
            }  # fmt: skip
            fh.write(json.dumps(line) + "\n")
            fh.flush()
            print(f"{'ok ' if result.ok else 'FLAG'} {name} {problem.label()} {line['worst_ratio']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
