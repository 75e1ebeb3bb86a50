"""What a packed batch costs against its documents run one by one, and against a dense mask.

``python benchmarks/packed_documents.py`` times, interleaved in one process (round after round,
each call once per round, the median kept), causal attention over ``--tokens`` tokens holding
``--documents`` documents of seeded long-tailed lengths (``longtail:K``,
:mod:`attnbench.case.documents`):

* ``packed``: one call of the implementation on the packed sequence (the document mask as its
  pattern: tiles outside every document skipped);
* ``one by one``: the sum, over the documents, of one call on each document alone (causal);
* ``dense mask``: SDPA given the packed batch's ``[N, N]`` boolean mask (what a kernel without
  document support computes: every pair, most of them masked).

It prints each time and the ratios packed ÷ one by one and dense mask ÷ packed.
"""

from __future__ import annotations

import argparse

import torch
from interleaved import Call, medians_ms, prepared

from attnbench import Problem
from attnbench.case.documents import document_lengths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--documents", default="longtail:8")
    parser.add_argument("--impls", nargs="+", default=["chunked", "flex"])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    shape = dict(heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim, causal=True)
    packed = Problem(seq_len=args.tokens, documents=args.documents, **shape)  # type: ignore[arg-type]
    lengths = document_lengths(args.documents, args.tokens, packed.seed)
    print(f"{args.documents} in {args.tokens} tokens: lengths {lengths}")
    with torch.no_grad():
        calls: dict[str, list[Call]] = {}
        for name in args.impls:
            calls[f"{name} packed"] = [prepared(name, packed)]
            calls[f"{name} one by one"] = [prepared(name, Problem(seq_len=n, **shape)) for n in lengths]  # type: ignore[arg-type]
        calls["sdpa dense mask"] = [prepared("sdpa", packed)]
        median = medians_ms(calls, args.rounds)  # first calls (compiling flex) outside the rounds
    for key, ms in median.items():
        print(f"{key:<24} {ms:9.1f} ms")
    for name in args.impls:
        alone = median[f"{name} packed"] / median[f"{name} one by one"]
        dense = median["sdpa dense mask"] / median[f"{name} packed"]
        print(f"{name}: packed / one by one = {alone:.2f}; sdpa's dense mask / packed = {dense:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
