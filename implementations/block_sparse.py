"""Block-sparse attention: compute only the ``block × block`` tiles a layout keeps.

The pattern
-----------
A block layout (:class:`attnbench.case.patterns.BlockLayout`: BigBird, Longformer, local) cuts the
score matrix into ``block × block`` tiles and keeps some of them: a band of local blocks around
the (bottom-right aligned) diagonal, a few global blocks, a few random ones. Blocks are cut by
key position (query ``i`` sits at ``p = i + Nk - Nq``), so query ``i`` may attend key ``j`` when
``table[(i + shift) // block, j // block]`` is True (``layout.table(Nq, Nk)``, ``shift`` from
``layout.shift``) and, when the problem also asks for them, the causal and window conditions hold.

The algorithm
-------------
Query rows are cut into the layout's row blocks. For every row block, list its kept key blocks,
without those that the causal or window range of its rows cannot reach (``pattern.row_ranges``:
under causal the local block above the diagonal goes away), and mark which kept tiles the
causal/window condition cuts (those carry a mask). Then (:func:`plan_layout`):

* consecutive kept blocks of a row block are joined into one run of keys;
* runs in the same place relative to the diagonal (the local band) or at the same keys (the
  global columns), of the same shape and mask, in consecutive row blocks, become *one* call on
  strided views of ``q``, ``k`` and ``v`` — the band of all rows is one view of ``k`` with
  overlapping rows, nothing copied; a global row block (it sees every key) is a run of its own;
* what is left — the random blocks, at different keys in every row — is *gathered*: each row
  block's leftover key blocks are copied into ``[C·block]`` keys (``C`` the largest count, the
  missing slots masked), one call for consecutive row blocks.

Each call is PyTorch's fused CPU FlashAttention kernel (the kernel behind SDPA, which returns the
log-sum-exp; ``torch.matmul`` tiles on other devices), and the calls that share query rows are
merged with FlashAttention's rule ``L = log(e^{L_1} + e^{L_2})``,
``o = o_1 e^{L_1 - L} + o_2 e^{L_2 - L}`` (:mod:`~attnbench.implementations._tiles`). A row that
sees no key outputs zeros. For BigBird (``local=1, global=1, random=2``) that is four calls:
the global row, the band, the global column, the gathered random blocks.

Cost
----
Time ``O(kept tiles · block² · D)`` — the kernel computes every kept tile whole, plus the masked
slots of the gathered call (rows with fewer leftover blocks than ``C``). For a layout with a fixed
number of kept blocks per row block and a fixed number of global rows, that is linear in ``N``:
BigBird at N = 4K keeps 1/9 of the tiles, at 16K 1/37, against SDPA's every pair (with a dense
boolean mask SDPA also adds and reads the ``N²`` mask). On top: the copy of the gathered keys and
values (``C·block`` keys per row block, ``O(N·C·D)``), one merge per extra call (a few passes over
the ``[B·H, N, D]`` output) and the copy of the output into place. Extra memory, linear in ``N``:
the gathered keys and values, the float32 output and log-sum-exp, the masks of the gathered and
cut tiles. The backward pass recomputes every call with the kernel's backward from the saved
output and log-sum-exp (``O(N)`` memory), adding the gathered keys' gradients back by index.

Low precision: bfloat16/float16 run in their own dtype (products with float32 accumulation)
where the CPU has matrix units for them, and are otherwise converted to float32 once (there a
bfloat16 product is ~100× slower than a float32 one).

Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and
``attnbench.measure`` only.
"""

from __future__ import annotations

import torch

from attnbench import Growth, Implementation, Problem, register
from attnbench.case.patterns import BlockLayout, Pattern
from attnbench.case.variants import case_sinks
from attnbench.implementations import _dispatch, _plan, _tile_bias, _tiles
from attnbench.plugins.contract import AttentionFn

Tensor = torch.Tensor


def slot_ranges(pattern: Pattern, layout: BlockLayout, nq: int, nk: int) -> tuple[Tensor, Tensor]:
    """The key range ``[lo, hi)`` of every query *slot*: the table's row ``r`` holds slots
    ``r·block … r·block + block - 1``, and slot ``t`` is query ``t - shift`` (blocks are cut by key
    position, so the first row of blocks may start before query 0). Slots outside ``[0, Nq)`` see
    nothing. Both ``[rows·block]`` int64."""
    rows = layout.table(nq, nk).shape[0]
    query = torch.arange(rows * layout.block) - layout.shift(nq, nk)  # [rows·block]
    real = (query >= 0) & (query < nq)
    lo, hi = pattern.row_ranges(nq, nk, rows=query.clamp(0, nq - 1))
    return torch.where(real, lo, nk), torch.where(real, hi, 0)


def kept_blocks(pattern: Pattern, layout: BlockLayout, nq: int, nk: int) -> Tensor:
    """The layout's ``[rows, nkb]`` table, without tiles the causal/window range cannot reach."""
    block = layout.block
    table = layout.table(nq, nk)  # [rows, nkb] bool
    rows, nkb = table.shape
    lo, hi = (t.view(rows, block) for t in slot_ranges(pattern, layout, nq, nk))  # [rows, block]
    first, last = lo.min(dim=1).values, hi.max(dim=1).values  # [rows]: keys any slot can see
    starts = torch.arange(nkb) * block  # [nkb]
    reach = (starts[None, :] < last[:, None]) & (starts[None, :] + block > first[:, None])  # [rows, nkb]
    return table & reach


def plan_layout(
    pattern: Pattern, nq: int, nk: int, device: torch.device | str = "cpu", max_rows: int | None = None
) -> _plan.Plan:
    """The calls of a layout: the band and the global columns batched over row blocks on strided
    views, long runs (global rows) whole, the other single blocks gathered; see the module
    docstring."""
    layout = pattern.layout
    assert layout is not None
    block, shift, local = layout.block, layout.shift(nq, nk), layout.local
    table = kept_blocks(pattern, layout, nq, nk)  # [rows, nkb]
    first = (nk - nq) // block  # position block of table row 0
    lo, hi = pattern.row_ranges(nq, nk)  # [Nq]
    batched: list[_plan.Tile] = []
    singles: list[_plan.Piece] = []
    for r in range(table.shape[0]):
        q0, q1 = max(0, r * block - shift), min(nq, (r + 1) * block - shift)
        cols = table[r].nonzero().flatten().tolist()
        if q1 <= q0 or not cols:
            continue
        row_lo, row_hi = lo[q0:q1, None], hi[q0:q1, None]  # [bq, 1]
        band = range(first + r - local, first + r + local + 1)  # the local blocks of this row block
        run: list[int] = []  # consecutive full blocks
        for c in [*cols, -2]:  # -2: flushes the last run
            if c >= 0:
                k0, k1 = c * block, min(nk, (c + 1) * block)
                keys = torch.arange(k0, k1)
                keep = (keys >= row_lo) & (keys < row_hi)  # [bq, bk]: the causal/window cut
                if not bool(keep.any()):
                    continue
                if bool(keep.all()) and (not run or run[-1] == c - 1):
                    run.append(c)
                    continue
            _split_run(run, band, layout.global_, q0, q1, block, nk, batched, singles)
            run = []
            if c < 0:
                break
            if bool(keep.all()):
                run = [c]
            else:
                batched.append(_plan.Tile(q0, q1 - q0, k0, k1 - k0, keep))  # cut by causal/window
    pieces = _plan.group_tiles(batched, device)
    return _plan.make_plan(nq, nk, pieces + gather(singles, block, device), max_rows)


def _split_run(
    run: list[int],
    band: range,
    global_: int,
    q0: int,
    q1: int,
    block: int,
    nk: int,
    batched: list[_plan.Tile],
    singles: list[_plan.Piece],
) -> None:
    """A run of consecutive full key blocks of one row block: kept whole when long (a global
    row), else cut into its band part and global blocks (batched over row blocks) and other
    single blocks (gathered)."""
    if not run:
        return
    start, stop = run[0], run[-1] + 1
    if stop - start > len(band) + 4:
        batched.append(_plan.Tile(q0, q1 - q0, start * block, min(nk, stop * block) - start * block))
        return
    inner = range(max(start, band.start), min(stop, band.stop))
    if len(inner):
        k0, k1 = inner.start * block, min(nk, inner.stop * block)
        batched.append(_plan.Tile(q0, q1 - q0, k0, k1 - k0))
    for c in run:
        if c in inner:
            continue
        k0, k1 = c * block, min(nk, (c + 1) * block)
        if c < global_:
            batched.append(_plan.Tile(q0, q1 - q0, k0, k1 - k0))
        else:
            singles.append(_plan.Piece(1, q0, q1 - q0, q1 - q0, k0, 0, k1 - k0))


def gather(singles: list[_plan.Piece], block: int, device: torch.device | str) -> list[_plan.Piece]:
    """Unmasked single-block tiles (the random blocks) gathered by query block: one piece per run
    of consecutive query blocks, each tile's keys its blocks' keys (``C`` blocks, the largest
    count; missing slots point at key 0 and are masked)."""
    by_rows: dict[tuple[int, int], list[int]] = {}
    for p in singles:
        by_rows.setdefault((p.q0, p.lq), []).extend(range(p.k0, p.k0 + p.lk))
    pieces: list[_plan.Piece] = []
    runs: list[list[tuple[int, int]]] = []
    for q0, lq in sorted(by_rows):
        if runs and runs[-1][-1][0] + runs[-1][-1][1] == q0 and runs[-1][-1][1] == lq:
            runs[-1].append((q0, lq))
        else:
            runs.append([(q0, lq)])
    for run in runs:
        q0, lq = run[0]
        width = max(len(by_rows[key]) for key in run)
        keys = torch.zeros(len(run), width, dtype=torch.long)  # [n, C·block]
        keep = torch.zeros(len(run), lq, width, dtype=torch.bool)  # [n, lq, C·block]
        for i, key in enumerate(run):
            listed = torch.tensor(by_rows[key])
            keys[i, : len(listed)] = listed
            keep[i, :, : len(listed)] = True
        mask = None if bool(keep.all()) else keep.to(device)
        pieces.append(_plan.Piece(len(run), q0, lq, lq, 0, 0, width, False, mask, keys.to(device), None))
    return pieces


@register("block_sparse")
class BlockSparse(Implementation):
    description = "Block-sparse attention over a BigBird/Longformer/local layout, computing only kept tiles"
    exact = True
    computes = ("block-sparse",)
    devices = ("cpu", "cuda")
    dtypes = ("float32", "bfloat16", "float16")
    features = frozenset({"layout", "causal", "window", "gqa", "cross", "backward", "sinks"})
    growth = Growth(1.0, 1.0)
    #: ``"fused"`` (PyTorch's CPU FlashAttention kernel) or ``"matmul"``; None: fused on the CPU.
    backend: str | None = None
    #: bfloat16/float16 products in their own dtype (True) or in float32 (False); None: by capability.
    low_precision: bool | None = None
    #: Query rows per kernel call at most (None: outputs under ``_plan.CALL_BYTES``).
    call_rows: int | None = None

    def supports(self, problem: Problem) -> str | None:
        if problem.pattern.layout is None:
            return "needs a block layout (e.g. layout='bigbird'); a dense problem has no blocks to skip"
        return _tile_bias.score_variant_reason(problem, gathers=True) or super().supports(problem)

    def prepare(self, problem: Problem) -> AttentionFn:
        """Plan the calls (runs, gathers, masks) once, outside the timed call."""
        rows = self.call_rows or _plan.rows_per_call(problem.batch, problem.heads, problem.head_dim)
        plan = plan_layout(problem.pattern, problem.seq_len, problem.kv_len, problem.device, rows)
        backend = _dispatch.pick_backend(problem.device, self.backend)
        work = _dispatch.compute_dtype(problem.torch_dtype, problem.device, self.low_precision)
        asked = self.low_precision
        scale = problem.scale
        sink = case_sinks(problem)  # [H], or None

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            dtype = _dispatch.under_autograd(work, asked, q, k, v)
            return _tiles.attention(q, k, v, plan, scale, backend, dtype, sink)  # [B, H, Nq, D]

        return run

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return self.prepare(problem)(q, k, v)
