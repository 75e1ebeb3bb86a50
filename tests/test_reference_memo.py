"""The case's references are computed once per worker and kept for the next pair of the same case
(attnbench.measure.reference_memo): reused only for equal inputs, never for other values."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from attnbench.case.problem import Problem
from attnbench.measure import reference_memo
from attnbench.measure.bench import Outputs, prepare
from attnbench.measure.verify import check, check_rows, judge
from attnbench.plugins.registry import Registry

CASE = Problem(batch=1, heads=4, seq_len=256, head_dim=32, causal=True, dtype="bfloat16")


@pytest.fixture(autouse=True)
def empty_memo() -> Iterator[None]:
    reference_memo.forget()
    yield
    reference_memo.forget()


@pytest.fixture(scope="module")
def registry() -> Registry:
    reg = Registry()
    reg.load_builtins()
    return reg


def _counts() -> tuple[int, int]:
    return reference_memo.stats["hits"], reference_memo.stats["misses"]


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
def test_a_cases_second_implementation_reuses_the_reference_and_gets_the_same_verdicts(
    registry: Registry, mode: str
) -> None:
    problem = CASE.with_(mode=mode)
    hits, misses = _counts()
    first = check(registry.get("naive"), problem)
    second = check(registry.get("sdpa_math"), problem)
    assert _counts() == (hits + 1, misses + 1)
    reference_memo.forget()
    alone = check(registry.get("sdpa_math"), problem)  # computed afresh
    assert first.ok and second.ok and alone.ok
    assert second.figures() == alone.figures()


def test_other_inputs_of_the_same_case_are_never_judged_against_the_kept_reference(registry: Registry) -> None:
    """Plant it: the output of the seeded inputs, judged on inputs whose queries differ by 5%. Had
    the memo served the seeded inputs' reference, that output would pass."""
    impl = registry.get("naive")
    inputs = CASE.make_inputs()  # [B, H, N, D] each
    rows = check_rows(CASE, 64)
    q, k, v = inputs
    seeded_out = prepare(impl, CASE, inputs)(q, k, v)  # [B, H, N, D]
    got = Outputs(seeded_out[:, :, rows])
    assert judge(impl, CASE, inputs, got, rows).ok  # the memo now holds the seeded inputs' reference
    changed = (q * 1.05, k, v)
    hits, misses = _counts()
    assert not judge(impl, CASE, changed, got, rows).ok
    assert _counts() == (hits, misses + 1)
    q.mul_(0.95)  # the seeded tensor, changed in place: a miss as well
    assert not judge(impl, CASE, inputs, got, rows).ok
    assert _counts() == (hits, misses + 2)


def test_the_memo_holds_no_more_than_its_bytes(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reference_memo, "MAX_BYTES", 1024)
    check(registry.get("naive"), CASE)
    hits, misses = _counts()
    check(registry.get("naive"), CASE)
    assert _counts() == (hits, misses + 1)
    assert not reference_memo._held


def test_a_tensor_off_the_cpu_is_not_kept() -> None:
    off = torch.empty(4, device="meta")
    assert reference_memo.remembered("x", CASE, (off,), lambda: 1) == 1
    assert not reference_memo._held
