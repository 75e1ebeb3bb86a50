"""Block-sparse attention: compute only the ``block × block`` tiles a layout keeps.

The pattern
-----------
A block layout (:class:`attnbench.patterns.BlockLayout`: BigBird, Longformer, local) cuts the
score matrix into ``block × block`` tiles and keeps some of them: a band of local blocks around
the (bottom-right aligned) diagonal, a few global blocks, a few random ones. Blocks are cut by
key position (query ``i`` sits at ``p = i + Nk - Nq``), so query ``i`` may attend key ``j`` when
``table[(i + shift) // block, j // block]`` is True (``layout.table(Nq, Nk)``, ``shift`` from
``layout.shift``) and, when the problem also asks for them, the causal and window conditions hold.

The algorithm
-------------
For every query block, list its kept key blocks. Key blocks that the causal or window range of
the block's rows cannot reach are dropped first (``pattern.row_ranges``): under causal the local
block above the diagonal goes away. Query blocks are then bucketed by how many key blocks they
keep, rounded up to a power of two, and within a bucket every list is padded to the bucket's
largest count ``C`` with masked slots. One bucket (a step of it, to bound the working set) is a
batched dense computation:

    Q blocks          [B·Hkv·n, G·block, D]       (G = H/Hkv query heads share a kv head)
    gathered K / V    [B·Hkv·n, C·block, D]       K[key_index[n, C]] — a copy of kept blocks
    scores            [B·Hkv·n, G·block, C·block]
    out               softmax(scores + mask) @ gathered V

The mask (built once in :meth:`BlockSparse.prepare`) hides padded slots, keys past ``Nk``,
padded query rows, and the causal/window conditions inside a tile. The bucketing matters for the
"global" query blocks of BigBird and Longformer, which keep every key block: padding all rows to
their count would make the computation dense again, so they form a bucket of their own. A row
that sees no key outputs zeros; the softmax subtracts each row's maximum in float32.

Cost
----
Time ``O(kept tiles · block² · D)``: for a layout with a fixed number of kept blocks per query
block row (local + global + random) plus a fixed number of global rows, that is linear in ``N``
(the padding inside a bucket costs at most 2×). Extra memory: the gathered keys and values and
the masks, ``O(N · C · block)`` — linear in ``N`` as well. Gradients flow through autograd
(low-precision inputs are then computed in float32 so that gradients summed over tiles do not
round at every step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnbench import Growth, Implementation, Problem, register
from attnbench.contract import AttentionFn
from attnbench.patterns import BlockLayout, Pattern

Tensor = torch.Tensor


@dataclass(frozen=True)
class Step:
    """``n`` query blocks computed together: their indices ``[n]``, their padded key-block lists
    ``[n, C]``, and ``hidden`` ``[n, block, C·block]`` bool, True where a pair is masked."""

    query_blocks: Tensor
    key_blocks: Tensor
    hidden: Tensor


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


def plan_steps(
    pattern: Pattern, nq: int, nk: int, elements_per_step: int, device: str | torch.device = "cpu"
) -> list[Step]:
    """Bucket the query blocks by kept count and cut each bucket into steps."""
    layout = pattern.layout
    assert layout is not None
    block = layout.block
    table = kept_blocks(pattern, layout, nq, nk)  # [rows, nkb]
    counts = table.sum(dim=1)  # [rows]
    lo, hi = slot_ranges(pattern, layout, nq, nk)  # [rows·block]
    steps = []
    buckets = torch.where(counts > 0, 2 ** torch.ceil(torch.log2(counts.clamp(min=1).double())), 0).long()
    for size in buckets.unique().tolist():
        if size == 0:
            continue  # query blocks that see nothing: zeros
        members = (buckets == size).nonzero().flatten()  # [m] query block indices
        width = int(counts[members].max())  # C: the bucket's longest list
        per_step = max(1, elements_per_step // (block * width * block))
        for s0 in range(0, len(members), per_step):
            qb = members[s0 : s0 + per_step]  # [n]
            steps.append(_step(table[qb], qb, width, block, nk, lo, hi, device))
    return steps


def _step(
    rows: Tensor,
    qb: Tensor,
    width: int,
    block: int,
    nk: int,
    lo: Tensor,
    hi: Tensor,
    device: str | torch.device,
) -> Step:
    """One step's gather indices and mask; ``rows`` is the ``[n, nkb]`` slice of the table."""
    order = torch.sort(rows.long(), dim=1, descending=True, stable=True).indices[:, :width]  # [n, C] kept first
    valid = torch.gather(rows, 1, order)  # [n, C] False for padded slots
    i = qb[:, None] * block + torch.arange(block)[None, :]  # [n, block] query slot
    j = (order[:, :, None] * block + torch.arange(block)).flatten(1)  # [n, C·block] key index
    slot = valid.repeat_interleave(block, dim=1)  # [n, C·block]
    row_lo, row_hi = lo[i][:, :, None], hi[i][:, :, None]  # [n, block, 1]; empty for slots off the queries
    keep = slot[:, None, :] & (j[:, None, :] >= row_lo) & (j[:, None, :] < row_hi)  # [n, block, C·block]
    keep &= (j < nk)[:, None, :]
    return Step(qb.to(device), order.to(device), (~keep).to(device))


def block_sparse_attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, block: int, shift: int, steps: list[Step]
) -> Tensor:
    """``q`` ``[B, H, Nq, D]``, ``k``/``v`` ``[B, Hkv, Nk, D]`` → ``[B, H, Nq, D]``; query ``i`` sits
    in slot ``i + shift`` of the blocks (see :func:`slot_ranges`)."""
    b, h, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = h // hkv
    nqb, nkb = -(-(nq + shift) // block), -(-nk // block)
    dtype = q.dtype
    if dtype != torch.float32 and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        q, k, v = q.float(), k.float(), v.float()  # autograd: gradients summed over tiles in float32
    if q.dtype == torch.float32:
        q = q * scale  # fold the scale into q once
    q_blocks = F.pad(q, (0, 0, shift, nqb * block - nq - shift)).reshape(b, hkv, g, nqb, block, d)  # [B,Hkv,G,nqb,bl,D]
    k_blocks = F.pad(k, (0, 0, 0, nkb * block - nk)).reshape(b, hkv, nkb, block, d)  # [B, Hkv, nkb, bl, D]
    v_blocks = F.pad(v, (0, 0, 0, nkb * block - nk)).reshape(b, hkv, nkb, block, d)  # [B, Hkv, nkb, bl, D]
    outs, done = [], []
    for step in steps:
        n, width = step.key_blocks.shape
        qs = q_blocks[:, :, :, step.query_blocks].transpose(2, 3).reshape(b * hkv * n, g * block, d)  # [BHn, G·bl, D]
        ks = k_blocks[:, :, step.key_blocks].reshape(b * hkv * n, width * block, d)  # [BHn, C·bl, D]
        vs = v_blocks[:, :, step.key_blocks].reshape(b * hkv * n, width * block, d)  # [BHn, C·bl, D]
        s = torch.bmm(qs, ks.transpose(1, 2))  # [BHn, G·bl, C·bl]
        if s.dtype != torch.float32:
            s = s.float().mul_(scale)
        s.view(b * hkv, n, g, block, width * block).masked_fill_(step.hidden[:, None], float("-inf"))
        row_max = torch.nan_to_num(s.detach().amax(dim=-1, keepdim=True), neginf=0.0)  # [BHn, G·bl, 1]
        p = s.sub_(row_max).exp_()  # [BHn, G·bl, C·bl]
        total = p.sum(dim=-1, keepdim=True)  # [BHn, G·bl, 1]
        o = torch.bmm(p.to(vs.dtype), vs).float() / total.masked_fill(total == 0, 1.0)  # [BHn, G·bl, D]
        outs.append(o.to(dtype).view(b, hkv, n, g, block, d))
        done.append(step.query_blocks)
    computed = torch.cat(done) if done else torch.zeros(0, dtype=torch.long, device=q.device)  # [m]
    missing = nqb - len(computed)  # query blocks that see no key: zeros
    outs.append(q.new_zeros(b, hkv, missing, g, block, d, dtype=dtype))
    order = torch.cat([computed, _complement(computed, nqb)])  # [nqb]: block of each slot
    out = torch.cat(outs, dim=2)[:, :, torch.argsort(order)]  # [B, Hkv, nqb, G, bl, D] in block order
    return out.transpose(2, 3).reshape(b, h, nqb * block, d)[:, :, shift : shift + nq]  # [B, H, Nq, D]


def _complement(indices: Tensor, n: int) -> Tensor:
    """The integers in ``[0, n)`` missing from ``indices``, ascending."""
    present = torch.zeros(n, dtype=torch.bool, device=indices.device)
    present[indices] = True
    return (~present).nonzero().flatten()


@register("block_sparse")
class BlockSparse(Implementation):
    description = "Block-sparse attention over a BigBird/Longformer/local layout, computing only kept tiles"
    exact = True
    computes = ("block-sparse",)
    devices = ("cpu", "cuda")
    dtypes = ("float32", "bfloat16", "float16")
    features = frozenset({"layout", "causal", "window", "gqa", "cross", "backward"})
    growth = Growth(1.0, 1.0)
    #: Score elements (per batch·head) computed per step; bounds the working set.
    step_elements: int = 1 << 19

    def supports(self, problem: Problem) -> str | None:
        if problem.pattern.layout is None:
            return "needs a block layout (e.g. layout='bigbird'); a dense problem has no blocks to skip"
        return super().supports(problem)

    def prepare(self, problem: Problem) -> AttentionFn:
        """Gather indices and masks of every step, built once outside the timed call."""
        layout = problem.pattern.layout
        assert layout is not None, "block_sparse needs a layout"
        steps = plan_steps(problem.pattern, problem.seq_len, problem.kv_len, self.step_elements, problem.device)
        scale, block, shift = problem.scale, layout.block, layout.shift(problem.seq_len, problem.kv_len)

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return block_sparse_attention(q, k, v, scale, block, shift, steps)

        return run

    def attention(self, q: Tensor, k: Tensor, v: Tensor, problem: Problem) -> Tensor:
        return self.prepare(problem)(q, k, v)
