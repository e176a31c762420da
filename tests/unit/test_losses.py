"""Distillation losses against straightforward reference implementations on random logits."""

from __future__ import annotations

import pytest
import torch

from slm_toolkit.distill.losses import KINDS, OnlineTargets, TopKTargets, distill_loss, divergence, teacher_topk

torch.manual_seed(0)


def _kl(a, b):
    return (a * (a / b).log()).sum(-1)


def reference(kind, p, q, param):
    """Textbook formulas on probabilities (float64), no log-space tricks."""
    if kind == "forward_kl":
        return _kl(p, q)
    if kind == "reverse_kl":
        return _kl(q, p)
    if kind == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if kind == "jsd":
        m = param * p + (1 - param) * q
        return param * _kl(p, m) + (1 - param) * _kl(q, m)
    if kind == "skl":
        return _kl(p, param * p + (1 - param) * q)
    if kind == "srkl":
        return _kl(q, param * q + (1 - param) * p)
    raise AssertionError(kind)


def _topk(t_logits: torch.Tensor, k: int) -> TopKTargets:
    """What the offline cache stores for teacher logits: top-k log-probs, ids, tail log-mass."""
    return TopKTargets(*teacher_topk(torch.log_softmax(t_logits, -1), k))


def _logits(n=37, v=23, scale=3.0):
    return torch.randn(n, v, dtype=torch.float64) * scale


def _ref_full(s, t, labels, weights, denom, kind, T, param, ce):
    p = torch.softmax(t / T, -1)
    q = torch.softmax(s / T, -1)
    kd = reference(kind, p, q, param) * T**2
    nll = -torch.log_softmax(s, -1).gather(-1, labels[:, None])[:, 0]
    return (((1 - ce) * kd + ce * nll) * weights).sum() / denom


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_matches_reference(kind):
    s, t = _logits(), _logits()
    param = 0.3
    got = divergence(kind, torch.log_softmax(t, -1), torch.log_softmax(s, -1), param)
    want = reference(kind, torch.softmax(t, -1), torch.softmax(s, -1), param)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    assert (got >= -1e-9).all()
    # identical distributions: zero for every kind
    same = divergence(kind, torch.log_softmax(t, -1), torch.log_softmax(t, -1), param)
    torch.testing.assert_close(same, torch.zeros_like(same), atol=1e-9, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T,ce", [(1.0, 0.0), (2.0, 0.0), (0.7, 0.25), (1.0, 1.0)])
def test_online_loss_chunked_matches_reference(kind, T, ce):
    n, h, v = 29, 8, 19
    hidden = torch.randn(n, h, dtype=torch.float64, requires_grad=True)
    head_w = torch.randn(v + 3, h, dtype=torch.float64)  # 3 padding rows beyond the shared vocab
    t_hidden = torch.randn(n, h, dtype=torch.float64)
    t_head_w = torch.randn(v, h, dtype=torch.float64) * 2
    labels = torch.randint(0, v, (n,))
    weights = torch.ones(n, dtype=torch.float64)
    weights[::4] = 0.0  # masked tokens
    weights[1::4] = 2.0  # a heavier segment
    denom = float((weights > 0).sum() + 5)  # global count: other micro-batches exist
    got = distill_loss(
        hidden,
        lambda x: x @ head_w.T,
        OnlineTargets(t_hidden, lambda x: x @ t_head_w.T),
        labels,
        weights,
        denom,
        kind=kind,
        temperature=T,
        param=0.2,
        ce_weight=ce,
        vocab=v,
        chunk_size=7,
    )
    ref_h = hidden.detach().clone().requires_grad_(True)
    want = _ref_full(ref_h @ head_w[:v].T, t_hidden @ t_head_w.T, labels, weights, denom, kind, T, 0.2, ce)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)
    got.backward()
    want.backward()
    torch.testing.assert_close(hidden.grad, ref_h.grad, rtol=1e-4, atol=1e-7)
    assert hidden.grad[::4].abs().max() == 0  # masked tokens get no gradient


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_topk_is_tail_bucketed(kind, T):
    n, v, k = 31, 17, 5
    s, t = _logits(n, v), _logits(n, v)
    targets = _topk(t, k)
    idx = targets.indices
    labels = torch.randint(0, v, (n,))
    weights = torch.ones(n, dtype=torch.float64)
    got = distill_loss(
        s.clone(),
        lambda x: x,
        targets,
        labels,
        weights,
        float(n),
        kind=kind,
        temperature=T,
        param=0.4,
        chunk_size=8,
    )
    # reference: k + 1 buckets on probabilities, then softened by T on both sides
    p_full, q_full = torch.softmax(t, -1), torch.softmax(s, -1)
    p = torch.cat([p_full.gather(-1, idx), 1 - p_full.gather(-1, idx).sum(-1, keepdim=True)], -1)
    q = torch.cat([q_full.gather(-1, idx), 1 - q_full.gather(-1, idx).sum(-1, keepdim=True)], -1)
    p, q = torch.softmax(p.log() / T, -1), torch.softmax(q.log() / T, -1)
    want = (reference(kind, p, q, 0.4) * T**2).mean()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-8)


def _bucketed_reference(t, s, idx, T):
    """Forward KL over the k + 1 buckets, from full-vocabulary probabilities in float64: the tail
    is the sum of the probabilities outside the top k (not 1 minus the top k)."""
    p, q = torch.softmax(t.double(), -1), torch.softmax(s.double(), -1)
    outside = torch.ones_like(p, dtype=torch.bool).scatter(-1, idx, False)
    pb = torch.cat([p.gather(-1, idx), (p * outside).sum(-1, keepdim=True)], -1)
    qb = torch.cat([q.gather(-1, idx), (q * outside).sum(-1, keepdim=True)], -1)
    pb, qb = torch.softmax(pb.log() / T, -1), torch.softmax(qb.log() / T, -1)
    return reference("forward_kl", pb, qb, 0.5) * T**2


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_topk_tail_is_exact_in_fp32_for_a_peaked_teacher(T):
    """k = 32 of 200 tokens, a teacher whose tail mass (~1e-9) is below fp32's resolution of 1:
    the fp32 top-k path (cache tail + student log-sum-exp) matches the float64 loss computed from
    the full vocabulary, where log(1 - sum of the top k) in fp32 would be rounding noise."""
    g = torch.Generator().manual_seed(0)
    n, v, k = 64, 200, 32
    t = torch.randn(n, v, generator=g, dtype=torch.float64) * 2
    t[:, :4] += 25.0  # peaked: four tokens hold all but ~1e-9 of the mass
    s = torch.randn(n, v, generator=g, dtype=torch.float64) * 2
    s[:, :4] += 8.0
    targets = TopKTargets(
        *(x.float() if x.is_floating_point() else x for x in teacher_topk(torch.log_softmax(t, -1), k))
    )
    ones = torch.ones(n)
    got = distill_loss(s.float(), lambda x: x, targets, torch.zeros(n, dtype=torch.long), ones, float(n), temperature=T)
    want = _bucketed_reference(t, s, targets.indices, T).mean()
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=0)
    # the case is a hard one: the teacher's tail from 1 - sum(top k) in fp32 is off by orders of magnitude
    naive = torch.log1p(-targets.logprobs.exp().sum(-1).clamp_max(1 - 1e-7))
    assert (naive - targets.tail).abs().max() > 5.0


def test_topk_with_whole_vocab_equals_full_forward_kl():
    n, v = 13, 11
    s, t = _logits(n, v), _logits(n, v)
    w = torch.ones(n, dtype=torch.float64)
    labels = torch.zeros(n, dtype=torch.long)
    got = distill_loss(s, lambda x: x, _topk(t, v), labels, w, float(n))
    want = reference("forward_kl", torch.softmax(t, -1), torch.softmax(s, -1), 0.5).mean()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_topk_penalizes_student_mass_outside_the_teacher_top_k():
    v, k = 10, 3
    t = torch.full((1, v), -10.0, dtype=torch.float64)
    t[0, :k] = 5.0
    targets = _topk(t, k)
    good = t.clone()
    bad = t.clone()
    bad[0, k:] = 5.0  # same ratios inside the top k, lots of mass outside
    one = torch.ones(1, dtype=torch.float64)
    lab = torch.zeros(1, dtype=torch.long)
    loss_good = distill_loss(good, lambda x: x, targets, lab, one, 1.0)
    loss_bad = distill_loss(bad, lambda x: x, targets, lab, one, 1.0)
    assert loss_good < 1e-6 < 0.5 < loss_bad


def test_global_normalization_makes_grad_accum_invariant():
    n, h, v = 24, 6, 9
    head_w = torch.randn(v, h, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(n, h, dtype=torch.float64)
    t_logits = _logits(n, v)
    t = _topk(t_logits, 4)
    labels = torch.randint(0, v, (n,))
    weights = (torch.rand(n) > 0.3).double()
    denom = float((weights > 0).sum())

    def loss(lo, hi):
        return distill_loss(
            hidden[lo:hi],
            lambda x: x @ head_w.T,
            TopKTargets(t.logprobs[lo:hi], t.indices[lo:hi], t.tail[lo:hi]),
            labels[lo:hi],
            weights[lo:hi],
            denom,
            ce_weight=0.3,
        )

    loss(0, n).backward()
    whole = head_w.grad.clone()
    head_w.grad = None
    for lo, hi in [(0, 5), (5, 17), (17, 24)]:
        loss(lo, hi).backward()
    torch.testing.assert_close(head_w.grad, whole, rtol=1e-10, atol=1e-12)


def test_no_supervised_tokens_gives_zero_not_nan():
    hidden = torch.randn(0, 4, requires_grad=True)
    out = distill_loss(
        hidden,
        lambda x: x @ torch.ones(4, 5),
        TopKTargets(torch.zeros(0, 2), torch.zeros(0, 2, dtype=torch.long), torch.zeros(0)),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0),
        0.0 + 1.0,
    )
    assert out.item() == 0.0
    out.backward()
    assert torch.isfinite(hidden.grad).all()


def test_chunking_keeps_logits_small():
    """The head never sees more than chunk_size rows at once (forward and recompute)."""
    seen = []
    w = torch.randn(50, 8)

    def head(x):
        seen.append(x.shape[0])
        return x @ w.T

    hidden = torch.randn(100, 8, requires_grad=True)
    loss = distill_loss(
        hidden,
        head,
        _topk(torch.randn(100, 50), 4),
        torch.zeros(100, dtype=torch.long),
        torch.ones(100),
        100.0,
        chunk_size=16,
    )
    loss.backward()
    assert max(seen) <= 16 and len(seen) > 100 // 16
