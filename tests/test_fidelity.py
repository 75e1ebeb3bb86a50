"""Probes and fidelity with known answers: each probe plants the share it says; exact
implementations recover all of it; a sliding window's retrieval drops exactly at its window; a
block layout retrieves inside its blocks; the attention maps recovered from outputs are the
implementation's own probabilities."""

from __future__ import annotations

import pytest
import torch

from attnbench import Problem
from attnbench.case.probes import DOCUMENT_PROBES, KINDS, TOY, TOY_QUERY, TOY_TARGET, parse_probe
from attnbench.measure import fidelity as fid
from attnbench.measure.verify import check_rows
from attnbench.plugins.registry import load_registry

PROBES = [k for k in KINDS if k not in ("random", "toy")]


def measured(name: str, problem: Problem, rows: int = 512) -> fid.Fidelity:
    impl = load_registry().get(name)
    q, k, v = problem.make_inputs()
    picked = check_rows(problem, rows)
    with torch.no_grad():
        out = impl.prepare(problem)(q, k, v)[:, :, picked]  # [B, H, R, D]
    found = fid.measure(out, q, k, v, problem, picked)
    assert found is not None
    return found


def test_probe_fields_parse_and_reject() -> None:
    assert parse_probe("retrieval") == ("retrieval", 0.9)
    assert parse_probe("retrieval:mass=0.6") == ("retrieval", 0.6)
    for bad in ("retrieve", "retrieval:mass=1.5", "recency:share=0.5"):
        with pytest.raises(ValueError, match="probe"):
            parse_probe(bad)
    with pytest.raises(ValueError, match="not in decode"):
        Problem(seq_len=1, kv_len=64, mode="decode", probe="retrieval")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("probe", PROBES)
def test_softmax_attention_on_a_probe_puts_the_planted_share_on_its_targets(probe: str, causal: bool) -> None:
    for mass in (0.9, 0.6):
        problem = Problem(batch=1, heads=2, seq_len=1024, head_dim=64, causal=causal, probe=f"{probe}:mass={mass}")
        q, k, _ = problem.make_inputs()
        plan = problem.targets()
        rows = plan.rows()
        s = (q[0, 0].double() @ k[0, 0].double().T) * problem.scale  # [N, N]
        p = torch.softmax(s.masked_fill(~problem.pattern.mask(1024, 1024), float("-inf")), dim=-1)
        keys = plan.index[rows]  # [R, T]
        share = (p[rows][torch.arange(len(rows))[:, None], keys.clamp(min=0)] * (keys >= 0)).sum(dim=1)
        assert abs(float(share.mean()) - mass) < 0.02, (probe, mass, float(share.mean()))
        assert float(share.median()) > mass - 0.05


@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("name", ["sdpa", "chunked"])
def test_exact_implementations_recover_everything(name: str, probe: str) -> None:
    found = measured(name, Problem(batch=1, heads=2, seq_len=1024, head_dim=64, causal=True, probe=probe))
    assert found.recovered == pytest.approx(1.0, abs=1e-4)
    assert 0.85 < found.probe_mass < 0.95
    assert abs(found.uniform_recovered) < 0.2  # the floor: uniform attention recovers next to nothing
    assert found.probe_rel_err < 1e-5


def test_a_sliding_window_retrieves_exactly_up_to_its_window() -> None:
    found = measured(
        "sliding_window",
        Problem(batch=1, heads=4, seq_len=2048, head_dim=64, causal=True, probe="retrieval", window=64),
    )
    inside = [share for lo, hi, share, _ in found.curve if hi <= 64]
    beyond = [share for lo, hi, share, _ in found.curve if lo >= 64]
    assert inside and beyond
    assert min(inside) >= 0.9  # every distance < 64 is in the window: retrieved (more, even: fewer competitors)
    assert max(abs(x) for x in beyond) < 0.05  # every distance >= 64 is out: chance


def test_a_block_layout_retrieves_inside_its_blocks() -> None:
    layout = "bigbird:block=64,local=1,global=1,random=2,seed=0"
    found = measured(
        "block_sparse",
        Problem(batch=1, heads=4, seq_len=4096, head_dim=64, causal=True, probe="retrieval", layout=layout),
    )
    near = [share for lo, hi, share, _ in found.curve if hi <= 64]  # always in the local band
    far = [share for lo, hi, share, _ in found.curve if lo >= 512]  # only through random or global blocks
    assert min(near) >= 0.9 and max(far) < 0.5


def test_linear_attention_is_measured_not_assumed() -> None:
    found = measured("linear", Problem(batch=1, heads=4, seq_len=2048, head_dim=64, causal=True, probe="retrieval"))
    assert found.curve and all(isinstance(share, float) for _, _, share, _ in found.curve)
    assert found.recovered < 0.5  # on planted targets, the feature map does not find them


def test_the_map_recovered_from_outputs_is_naives_own_probabilities() -> None:
    problem = Problem(batch=1, heads=2, seq_len=128, head_dim=32, causal=True, probe="induction")
    q, k, v = problem.make_inputs()
    fn = load_registry().get("naive").prepare(problem)
    recovered = fid.effective_map(fn, q, k, v)  # [128, 128]
    scores = (q[0, 0] @ k[0, 0].T) * problem.scale
    explicit = torch.softmax(scores.masked_fill(~problem.pattern.mask(128, 128), float("-inf")), dim=-1)
    assert float((recovered - explicit).abs().max()) < 1e-6
    decoded = fid.decode(fid.encode(recovered), 128, 128)
    assert abs(decoded - explicit.numpy()).max() < 1e-3  # float16 storage


def test_in_the_toy_sentence_it_finds_cat_under_softmax_and_not_through_a_short_window() -> None:
    problem = Problem(batch=1, heads=1, seq_len=16, head_dim=64, causal=True, probe="toy")
    q, k, v = problem.make_inputs()
    assert TOY[TOY_QUERY] == "it" and TOY[TOY_TARGET] == "cat"
    assert int(fid.softmax_map(q, k, problem)[TOY_QUERY].argmax()) == TOY_TARGET
    window = problem.with_(window=4)
    fn = load_registry().get("sliding_window").prepare(window)
    row = fid.effective_map(fn, q, k, v)[TOY_QUERY]
    assert int(row.argmax()) != TOY_TARGET and float(row[TOY_TARGET]) == 0.0


@pytest.mark.parametrize("probe", DOCUMENT_PROBES)
def test_probes_inside_packed_documents_keep_every_target_in_its_rows_document(probe: str) -> None:
    """Packed documents (8, long-tailed, in 2048 tokens): each target lies at or before its row,
    never before its document's first token; softmax under the document mask puts the planted
    share on them; an exact kernel recovers all of it, and one that lets rows see the documents
    before theirs (planted: plain causal attention over the packed inputs) does not."""
    problem = Problem(batch=1, heads=2, seq_len=2048, head_dim=64, causal=True, documents="longtail:8", probe=probe)
    plan, starts = problem.targets(), problem.document_starts()
    assert starts is not None
    rows = torch.arange(2048)[:, None]
    have = plan.index >= 0  # [N, T]
    inside = (plan.index >= starts[:, None]) & (plan.index <= rows)
    assert bool((inside | ~have).all())
    assert not bool(have[torch.unique(starts)].any())  # a document's first token has nothing before it
    assert int(have.any(dim=1).sum()) == 2048 - 8
    q, k, v = problem.make_inputs()
    s = (q[0, 0].double() @ k[0, 0].double().T) * problem.scale  # [N, N]
    p = torch.softmax(s.masked_fill(~problem.pattern.mask(2048, 2048), float("-inf")), dim=-1)
    picked = plan.rows()
    keys = plan.index[picked]
    share = (p[picked][torch.arange(len(picked))[:, None], keys.clamp(min=0)] * (keys >= 0)).sum(dim=1)
    assert abs(float(share.mean()) - 0.9) < 0.02
    assert measured("chunked", problem).recovered == pytest.approx(1.0, abs=1e-4)
    sampled = check_rows(problem, 512)
    with torch.no_grad():  # causal over the whole packed sequence: every earlier document leaks in
        leaky = load_registry().get("sdpa").prepare(problem.with_(documents="1"))(q, k, v)[:, :, sampled]
    found = fid.measure(leaky, q, k, v, problem, sampled)
    assert found is not None and found.recovered < 0.97


def test_a_probe_that_would_cross_documents_is_refused_naming_both_keys() -> None:
    for probe in ("global", "induction", "toy"):
        with pytest.raises(ValueError, match=f"documents 'uniform:2' with probe '{probe}'"):
            Problem(seq_len=512, documents="uniform:2", probe=probe)
