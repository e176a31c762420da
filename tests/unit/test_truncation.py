"""Truncation happens before batching, masks come from segment ids, full batches are split."""

from __future__ import annotations

import pytest

from slm_toolkit.data.example import ANSWER, COT, PROMPT, TEMPLATE, TokenizedExample
from slm_toolkit.distill.batching import plan_steps, sequence_key
from slm_toolkit.distill.config import DistillConfig
from slm_toolkit.distill.masks import attribute_template, label_weights
from slm_toolkit.distill.truncation import Cut, full_batch_splits, is_full_batch, keep_length, truncate

T, P, C, A = TEMPLATE, PROMPT, COT, ANSWER


def example(n_prompt=3, n_cot=6, n_answer=2, start=10) -> TokenizedExample:
    # <bos> P.. <think> C.. </think> A.. <eos>
    segs = [T] + [P] * n_prompt + [T] + [C] * n_cot + [T] + [A] * n_answer + [T]
    return TokenizedExample(ids=list(range(start, start + len(segs))), segments=segs)


def test_config_rejects_fraction_zero_one_and_both():
    for bad in ({"fraction": 0}, {"fraction": 1.0}, {"fraction": 1.5}, {"fraction": 0.5, "tokens": 10}):
        with pytest.raises(ValueError, match="must be in \\(0, 1\\)|exclusive"):
            DistillConfig.model_validate({"truncate": bad})
    with pytest.raises(ValueError, match="Extra inputs"):
        DistillConfig.model_validate({"truncate": {"fractoin": 0.5}})
    with pytest.raises(ValueError, match="not in `supervise`"):
        DistillConfig.model_validate({"supervise": ["cot"], "segment_weights": {"answer": 2.0}})


def test_template_tokens_belong_to_the_segment_they_close():
    ex = example(2, 2, 1)
    assert attribute_template(ex.segments) == [T, P, P, P, C, C, C, A, A]
    w = label_weights(ex.segments, {C: 1.0, A: 2.0})
    # position t predicts token t+1: <think> (prompt) unsupervised, CoT and </think> 1, answer and <eos> 2
    assert w == [0, 0, 0, 1, 1, 1, 2, 2]


def test_head_truncation_keeps_a_prefix():
    ex = example()
    n = len(ex.ids)
    ids, segs = truncate(ex.ids, ex.segments, fraction=0.5, tokens=None, mode="head")
    assert ids == ex.ids[: keep_length(n, 0.5, None)] and len(ids) == round(n / 2)
    assert segs == ex.segments[: len(ids)]
    ids, _ = truncate(ex.ids, ex.segments, fraction=None, tokens=4, mode="head")
    assert ids == ex.ids[:4]
    assert truncate(ex.ids, ex.segments, fraction=None, tokens=1000, mode="head")[0] == ex.ids


def test_keep_answer_cuts_the_cot_and_keeps_the_end():
    ex = example(3, 10, 2)
    n = len(ex.ids)  # 1+3+1+10+1+2+1 = 19
    ids, segs = truncate(ex.ids, ex.segments, fraction=0.5, tokens=None, mode="keep_answer")
    assert len(ids) == keep_length(n, 0.5, None)
    assert ids[-4:] == ex.ids[-4:] and segs[-4:] == [T, A, A, T]  # </think> answer <eos>
    assert ids[: len(ids) - 4] == ex.ids[: len(ids) - 4]  # the head is a prefix


def test_full_batches_are_an_exact_evenly_spread_share():
    flags = [is_full_batch(i, 0.15) for i in range(100)]
    assert sum(flags) == 15
    assert not any(is_full_batch(i, 0.0) for i in range(10))
    assert full_batch_splits(0.5, None, 40) == 2 and full_batch_splits(0.25, None, 40) == 4
    assert full_batch_splits(None, 10, 35) == 4


def _plan(examples, cut=None, **kw):
    args = dict(batch_size=4, grad_accum=1, epochs=1, seed=0, weight_table={C: 1.0, A: 1.0}, pad_id=0)
    return list(plan_steps(examples, cut=cut, **(args | kw)))


def test_truncated_batches_are_padded_only_to_their_longest():
    exs = [example(3, 6 + i, 2, start=100 * i) for i in range(8)]
    full = _plan(exs)
    cut = _plan(exs, Cut(fraction=0.5))
    for a, b in zip(full, cut):
        (ma,), (mb,) = a.micro, b.micro
        assert mb.input_ids.shape[1] == max(round(len(e) / 2) for e in _lens(ma)) < ma.input_ids.shape[1]
        assert mb.tokens < 0.6 * ma.tokens and b.denom < a.denom


def _lens(mb):
    return [[0] * int(m) for m in mb.attention_mask.sum(1)]


def test_examples_cut_to_nothing_contribute_nothing_and_are_counted():
    exs = [example(3, 6, 2, start=100 * i) for i in range(4)] + [
        example(20, 2, 1, start=1000 + 100 * i) for i in range(4)
    ]
    steps = _plan(exs, Cut(fraction=0.5), batch_size=8, weight_table={A: 1.0})  # answers are all cut away
    (step,) = steps
    assert step.empty == 8 and step.denom == 0
    (mb,) = step.micro
    assert mb.labels.numel() == 0 and mb.input_ids.shape == (1, 1)  # a dummy, nothing forwarded
    steps = _plan(exs, Cut(fraction=0.5), batch_size=8, weight_table={C: 1.0})
    assert steps[0].empty == 4  # the long-prompt examples lost all their CoT
    assert steps[0].micro[0].input_ids.shape[0] == 4


def test_full_batches_run_as_micro_batches_no_longer_than_truncated_ones():
    exs = [example(3, 12, 2, start=100 * i) for i in range(40)]
    steps = _plan(exs, Cut(fraction=0.5, full_share=0.25), batch_size=8, grad_accum=2)
    fulls = [s for s in steps if s.full]
    assert len(fulls) == 1 and len(steps) == 5
    truncated_max = max(m.tokens for s in steps if not s.full for m in s.micro)
    assert len(fulls[0].micro) == 4
    assert max(m.tokens for m in fulls[0].micro) <= truncated_max
    assert sum(m.labels.numel() for m in fulls[0].micro) == fulls[0].denom


def test_processes_share_the_global_batch_and_its_denominator():
    exs = [example(3, 6 + i % 3, 2, start=100 * i) for i in range(16)]
    one = _plan(exs, batch_size=8)
    two = [_plan(exs, batch_size=8, rank=r, world=2) for r in range(2)]
    for s, a, b in zip(one, *two):
        assert s.denom == a.denom == b.denom
        assert a.micro[0].labels.numel() + b.micro[0].labels.numel() == s.micro[0].labels.numel()
    # head-truncated sequences are read from the full sequence's cache entry
    (mb,) = _plan(exs[:1], Cut(fraction=0.5), batch_size=1)[0].micro
    assert mb.cache_keys == [sequence_key(exs[0].ids)]
