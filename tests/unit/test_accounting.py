"""The shared compute-accounting helper."""

from __future__ import annotations

import numpy as np

from slm_toolkit.core.accounting import Accountant, forward_flops, rss_bytes, training_flops


def test_analytic_flops():
    assert training_flops(1_000, 10) == 60_000
    assert forward_flops(1_000, 10) == 20_000


def test_metrics_count_and_resume():
    acc = Accountant(student_params=100, teacher_params=400)
    acc.student_tokens = acc.student_train_tokens = 50
    acc.teacher_tokens = 50
    acc.supervised_tokens, acc.examples, acc.empty_examples = 30, 4, 1
    m = acc.metrics()
    assert m["flops_student"] == 6 * 100 * 50 and m["flops_teacher"] == 2 * 400 * 50
    assert m["flops"] == m["flops_student"] + m["flops_teacher"]
    assert m["examples_without_supervision"] == 1 and m["tokens_supervised"] == 30
    assert m["wall_time_s"] > 0 and m["tokens_per_s"] > 0
    resumed = Accountant(student_params=100, teacher_params=400)
    saved = acc.state()
    resumed.restore(saved)
    assert resumed.metrics()["tokens_student"] == 50
    assert resumed.elapsed() >= saved["wall_time_s"]  # a resumed run keeps counting the earlier time


def test_peak_memory_follows_a_large_allocation():
    acc = Accountant(student_params=1)
    acc.begin()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
    acc.sample()
    del block
    m = acc.memory()
    assert rss_bytes() > 0
    assert m["activation_mb"] > 48 and m["peak_memory_mb"] > 48
