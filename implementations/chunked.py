"""Chunked attention: FlashAttention's online softmax over tiles, in PyTorch.

The algorithm
-------------
Softmax attention for one query row ``q`` is ``o = Σ_j e^{s_j} v_j / Σ_j e^{s_j}`` with
``s_j = q·k_j · scale``. Both sums can be accumulated over the keys in blocks, as long as every
partial sum is expressed relative to the same running maximum (for numerical safety). After the
key blocks ``1..t`` a row keeps

    m  running maximum of its scores                       [rows, 1]
    l  Σ e^{s_j - m}                                        [rows, 1]
    a  Σ e^{s_j - m} v_j   (unnormalized output)            [rows, D]

and a new key block with scores ``S`` updates them as (Milakov & Gimelshein 2018; Dao et al.
2022, "FlashAttention")

    m' = max(m, rowmax(S))
    P  = exp(S - m')                 the block's probabilities, unnormalized
    α  = exp(m - m')                 rescales what was accumulated so far
    l' = α·l + rowsum(P)
    a' = α·a + P V_block

and at the end ``o = a / l``. Equivalently a finished part of the keys is summarized by its
normalized output ``o_A`` and its log-sum-exp ``L_A = m + log l``, and two parts merge as
``L = log(e^{L_A} + e^{L_B})``, ``o = o_A e^{L_A - L} + o_B e^{L_B - L}``: the ``Nq × Nk``
score matrix never exists.

Tiles and patterns
------------------
The queries are cut into blocks of ``block_q`` rows. Query block ``[q0, q0 + block_q)`` has its
first row at key position ``d0 = q0 + Nk - Nq`` (bottom-right alignment, :mod:`attnbench.case.patterns`);
its keys are cut into the *diagonal* tile ``[d0, d0 + block_q)`` and tiles of ``block_k`` keys on
either side, clipped to the range its rows may see (``pattern.row_ranges``). Before any data is
seen, :meth:`Chunked.prepare` classifies every tile once
(:func:`~attnbench.implementations._pattern_plan.plan_pattern`):

* every pair masked (beyond the causal diagonal, outside a window band, a block the layout
  drops): **skipped**, never computed;
* every pair kept: unmasked; the consecutive unmasked tiles of a block are joined into one run;
* the causal diagonal tile: top-left causal (query ``r`` sees key ``c ≤ r``), no mask tensor;
* other boundary tiles (window edges, layout blocks finer than a tile, the edges of packed
  documents): a boolean mask.

Sinks (``sinks = "learned"``) join at the end, through the log-sum-exp the tiles already merge
by: ``lse' = log(e^lse + e^σ)``, ``out' = out · e^(lse − lse')``; the backward recomputes each
tile's probabilities from ``lse'``, which are those with the sink, so it needs no change.

ALiBi (``bias = "alibi"``) reaches the tiles as small additive masks
(:mod:`~attnbench.implementations._tile_bias`): the keys before a block's diagonal take a bias on
the keys alone, the row's constant moved into the log-sum-exp, and each diagonal tile (kept as its
own ``block_q × block_q`` tile rather than joined into one causal call) its ``[H, block_q,
block_q]`` bias: linear memory, and at 2K and 4K causal tokens 1.01× and 1.15× the time
without ALiBi, 0.58× and 0.55× SDPA's with the whole float mask (interleaved in one process on
a quiet two-core AVX2 VM, 8 query heads over 2, D64, float32).

A packed batch (``documents``) is a pattern like the others: each row sees its own document
only, so every tile outside all documents is skipped and the batch costs its documents' pairs
plus the boundary tiles' waste.

Tiles of the same shape, mask and position relative to their block's diagonal are batched over
all query blocks into one call, as strided views of ``q``, ``k`` and ``v`` (no copies): under
causal attention the diagonal tiles of all blocks are one call, and each block's run of keys
``[0, d0)`` another; full attention is a single call. Each call is PyTorch's fused CPU
FlashAttention kernel (the kernel behind SDPA, which returns the log-sum-exp), and the calls
are merged with the rule above (:mod:`~attnbench.implementations._tiles`; on other devices the
same tiles run as ``torch.matmul`` products). A row that sees no key outputs zeros.

Cost
----
Time: ``4·D`` FLOPs per computed pair. Full attention computes the same ``Nq·Nk`` pairs as SDPA
in the same kernel, so its time is SDPA's. Causal attention computes the ``d0`` keys before each
block's diagonal plus the whole ``block_q × block_q`` diagonal tile (the kernel fills its upper
triangle with ``-inf`` rather than skipping it): ``N²/2 + N·block_q/2`` pairs, ``1 + block_q/N``
times the causal half (1.06× at N = 4K with ``block_q = 256``), while SDPA's causal kernel
computes its ``256 × 512`` blocks up to the diagonal, ``≈ N²/2 + N·256`` pairs. On top of the
pairs come one merge per extra call, ``O(Nq·D)`` each (a few passes over the output), and one
kernel call per query block (``Nq/block_q`` calls of ~20 µs). A window of width ``W`` costs about
``N·(W + block_q)`` pairs, a block layout its kept tiles.

Memory, linear in ``N``: the kernel's per-thread ``qSplit × 512`` score buffers, the float32
output and log-sum-exp accumulators (``O(N·D)``), the masks of boundary tiles (``O(N·block)``,
built once in ``prepare``). The backward pass (:class:`~attnbench.implementations._tiles.TileAttention`)
recomputes each call's tiles from the saved output and log-sum-exp with the kernel's backward,
FlashAttention's way, so training memory is ``O(N·D)`` as well.

Low precision: bfloat16/float16 run in their own dtype (products with float32 accumulation)
where the CPU has matrix units for them, and otherwise are converted to float32 once on the way
in (there a bfloat16 product is ~100× slower than a float32 one); merges and gradient sums are
float32 either way. Where the units exist the fused kernel still gains nothing from them: on an
AVX-512 BF16 CPU (bfloat16 products of a tile's shape at 370-390 GFLOP/s against 65-96 in
float32) it took as long in bfloat16 as in float32. Computing the tiles unfused instead —
batched bfloat16 products around ``torch.softmax`` — ran 1.36-1.75× faster than the fused
float32 kernel there, but PyTorch's CPU products can return bfloat16 only, so the scores are
rounded to bfloat16 before the softmax: as rough as the plain low-precision computation, and
past the contract's bound of twice its error (1.1× the bound, D = 32 and grouped heads). This
module keeps the fused kernel.

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

import torch

from attnbench import Growth, Implementation, Problem, register
from attnbench.case.variants import case_sinks
from attnbench.implementations import _dispatch, _pattern_plan, _plan, _tile_bias, _tiles
from attnbench.plugins.contract import AttentionFn

Tensor = torch.Tensor


@register("chunked")
class Chunked(Implementation):
    description = "FlashAttention's online softmax over query and key tiles in PyTorch; skips masked tiles"
    exact = True
    computes = ("full", "causal", "window", "block-sparse")
    devices = ("cpu", "cuda")
    dtypes = ("float32", "bfloat16", "float16")
    features = frozenset({"causal", "window", "layout", "gqa", "cross", "backward", "documents", "sinks", "alibi"})
    growth = Growth(2.0, 1.0)
    #: Query rows per block (the diagonal tile is ``block_q × block_q``) and keys per other tile.
    block_q: int = 256
    block_k: int = 512
    #: ``"fused"`` (PyTorch's CPU FlashAttention kernel per tile) or ``"matmul"``; None: fused on the CPU.
    backend: str | None = None
    #: bfloat16/float16 products in their own dtype (True) or in float32 (False); None: by capability.
    low_precision: bool | None = None
    #: Query rows per kernel call at most (None: outputs under ``_plan.CALL_BYTES``).
    call_rows: int | None = None

    def supports(self, problem: Problem) -> str | None:
        return _tile_bias.score_variant_reason(problem) or super().supports(problem)

    def prepare(self, problem: Problem) -> AttentionFn:
        """Plan the tiles (skips, joins, batches and boundary masks) once, outside the timed call."""
        rows = self.call_rows or _plan.rows_per_call(problem.batch, problem.heads, problem.head_dim)
        plan = _pattern_plan.plan_pattern(
            problem.pattern, problem.seq_len, problem.kv_len, self.block_q, self.block_k, problem.device, rows,
            stairs=problem.bias != "alibi",
        )  # fmt: skip
        backend = _dispatch.pick_backend(problem.device, self.backend)
        work = _dispatch.compute_dtype(problem.torch_dtype, problem.device, self.low_precision)
        asked = self.low_precision
        scale = problem.scale
        sink = case_sinks(problem)  # [H], or None
        alibi = _tile_bias.for_case(plan, problem)

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            dtype = _dispatch.under_autograd(work, asked, q, k, v)
            return _tiles.attention(q, k, v, plan, scale, backend, dtype, sink, alibi)  # [B, H, Nq, D]

        return run

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return self.prepare(problem)(q, k, v)
