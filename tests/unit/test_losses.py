"""Distillation losses against straightforward reference implementations on random logits."""

from __future__ import annotations

import pytest
import torch

from slm_toolkit.distill.losses import KINDS, OnlineTargets, TopKTargets, distill_loss, divergence

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
    t_logp = torch.log_softmax(t, -1)
    top, idx = t_logp.topk(k, -1)
    labels = torch.randint(0, v, (n,))
    weights = torch.ones(n, dtype=torch.float64)
    got = distill_loss(
        s.clone(),
        lambda x: x,
        TopKTargets(top, idx),
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


def test_topk_with_whole_vocab_equals_full_forward_kl():
    n, v = 13, 11
    s, t = _logits(n, v), _logits(n, v)
    top, idx = torch.log_softmax(t, -1).topk(v, -1)
    w = torch.ones(n, dtype=torch.float64)
    labels = torch.zeros(n, dtype=torch.long)
    got = distill_loss(s, lambda x: x, TopKTargets(top, idx), labels, w, float(n))
    want = reference("forward_kl", torch.softmax(t, -1), torch.softmax(s, -1), 0.5).mean()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_topk_penalizes_student_mass_outside_the_teacher_top_k():
    v, k = 10, 3
    t = torch.full((1, v), -10.0, dtype=torch.float64)
    t[0, :k] = 5.0
    top, idx = torch.log_softmax(t, -1).topk(k, -1)
    good = t.clone()
    bad = t.clone()
    bad[0, k:] = 5.0  # same ratios inside the top k, lots of mass outside
    one = torch.ones(1, dtype=torch.float64)
    lab = torch.zeros(1, dtype=torch.long)
    loss_good = distill_loss(good, lambda x: x, TopKTargets(top, idx), lab, one, 1.0)
    loss_bad = distill_loss(bad, lambda x: x, TopKTargets(top, idx), lab, one, 1.0)
    assert loss_good < 1e-6 < 0.5 < loss_bad


def test_global_normalization_makes_grad_accum_invariant():
    n, h, v = 24, 6, 9
    head_w = torch.randn(v, h, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(n, h, dtype=torch.float64)
    t_logits = _logits(n, v)
    top, idx = torch.log_softmax(t_logits, -1).topk(4, -1)
    labels = torch.randint(0, v, (n,))
    weights = (torch.rand(n) > 0.3).double()
    denom = float((weights > 0).sum())

    def loss(lo, hi):
        return distill_loss(
            hidden[lo:hi],
            lambda x: x @ head_w.T,
            TopKTargets(top[lo:hi], idx[lo:hi]),
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
        TopKTargets(torch.zeros(0, 2), torch.zeros(0, 2, dtype=torch.long)),
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
    top, idx = torch.log_softmax(torch.randn(100, 50), -1).topk(4, -1)
    loss = distill_loss(
        hidden, head, TopKTargets(top, idx), torch.zeros(100, dtype=torch.long), torch.ones(100), 100.0, chunk_size=16
    )
    loss.backward()
    assert max(seen) <= 16 and len(seen) > 100 // 16
