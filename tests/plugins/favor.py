"""FAVOR+ (Performer, Choromanski et al. 2021) as a function plugin: every ``@register`` keyword
of the function route in one place.

* ``setup=`` draws the random features once per case, outside the timing, from the case's own
  generator (``problem.generator()``), so the timed call is only the attention (the decorated
  function, which draws them on every call, is what runs without ``setup=``);
* ``reference=`` is the approximation's own definition — the same features, the quadratic way,
  in float64 — which attnbench judges it against (its distance from softmax attention and from
  uniform attention is reported beside);
* ``flops=`` counts its own work (it is not softmax attention).

The features: ``φ(x) = exp(ω·x − |x|²/2) / √m`` for ``m`` Gaussian directions ``ω`` (rows of a
``[m, D]`` matrix), applied to ``x·scale^½`` so that ``φ(q)·φ(k)`` estimates
``exp(q·k·scale)`` without bias.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from attnbench import Problem, register

Tensor = torch.Tensor
FEATURES = 256


def directions(problem: Problem, m: int = FEATURES) -> Tensor:
    """``[m, D]`` orthogonal random features (Performer's): blocks of ``D`` orthonormal rows from
    the QR decomposition of Gaussian matrices, each row rescaled to a Gaussian vector's length —
    drawn from the case's seed, so set-up and reference draw the same ones."""
    gen = problem.generator(salt=7)
    d = problem.head_dim
    blocks = []
    for _ in range(-(-m // d)):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
        blocks.append(q.T)  # [D, D] orthonormal rows
    rows = torch.cat(blocks)[:m]  # [m, D]
    lengths = torch.randn(m, d, generator=gen, dtype=torch.float64).norm(dim=1, keepdim=True)
    return rows * lengths


def favor_features(x: Tensor, omega: Tensor, scale: float) -> Tensor:
    """``[..., N, D]`` → ``[..., N, m]`` positive random features."""
    x = x * math.sqrt(scale)
    proj = x @ omega.to(x.dtype).T  # [..., N, m]
    return torch.exp(proj - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(omega.shape[0])


def favor(q: Tensor, k: Tensor, v: Tensor, omega: Tensor, scale: float) -> Tensor:
    """Non-causal FAVOR+: ``φ(Q) (φ(K)ᵀ V) / φ(Q) Σφ(K)``, linear in N."""
    fq, fk = favor_features(q, omega, scale), favor_features(k, omega, scale)  # [B, H, N, m]
    kv = fk.transpose(-1, -2) @ v  # [B, H, m, D]
    z = fk.sum(-2, keepdim=True).transpose(-1, -2)  # [B, H, m, 1]
    return (fq @ kv) / (fq @ z)  # [B, H, Nq, D]


def setup(problem: Problem) -> Callable[..., Tensor]:
    """Draw the directions once; the returned function is what is timed."""
    omega = directions(problem).to(problem.device, torch.float32)

    def run(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        return favor(q.float(), k.float(), v.float(), omega, scale).to(q.dtype)

    return run


def reference(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, problem: Problem) -> Tensor:
    """The same estimator in float64, the quadratic way: ``A = φ(Q)φ(K)ᵀ``, ``out = A V / rowsum A``,
    with the same directions (the case's seed)."""
    omega = directions(problem)
    a = favor_features(q, omega, scale) @ favor_features(k, omega, scale).transpose(-1, -2)  # [B, H, Nq, Nk]
    return (a @ v) / a.sum(-1, keepdim=True)


def flops(problem: Problem) -> float:
    """Feature maps ``2·N·m·D`` each, ``φ(K)ᵀV`` and ``φ(Q)·KV`` ``2·N·m·D`` each."""
    n, m, d = problem.seq_len + problem.kv_len, FEATURES, problem.head_dim
    return float(problem.batch * problem.heads * 4 * n * m * d)


@register(
    "favor",
    exact=False,
    approximates="softmax attention",
    features=(),
    dtypes=("float32",),
    setup=setup,
    reference=reference,
    flops=flops,
    tolerance=1e-4,
)
def favor_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, problem: Problem) -> Tensor:
    """FAVOR+ random-feature attention (non-causal), features drawn outside the timing."""
    return setup(problem)(q, k, v, causal=causal, scale=scale)


# The same function without ``setup=``: it draws its features inside every timed call — the
# price ``setup=`` removes (compare the two in one run: benchmarks/setup_outside_timing.toml).
register(
    "favor_inline", exact=False, approximates="softmax attention", features=(), dtypes=("float32",),
    reference=reference, flops=flops, tolerance=1e-4,
)(favor_attention)  # fmt: skip
