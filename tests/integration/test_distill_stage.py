"""The distill stage end to end on a tiny teacher/student pair (built from config)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distill_helpers import tiny_input, tiny_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from slm_toolkit.core.artifacts import read_meta
from slm_toolkit.demo.tokenizer import build_demo_tokenizer
from slm_toolkit.distill.config import DistillConfig
from slm_toolkit.distill.stage import run
from slm_toolkit.distill.trainer import VocabularyMismatch

HERE = Path(__file__).parent
BASE = {"train": {"batch_size": 8, "max_steps": 6, "lr": 3e-3, "warmup": 0.0, "checkpoint_every": 3}}


def cfg(student, **extra) -> DistillConfig:
    merged = BASE | extra
    merged["train"] = BASE["train"] | extra.get("train", {})
    return DistillConfig.model_validate(merged | {"student": str(student)})


def test_stage_trains_saves_and_accounts(tmp_path):
    inp, student = tiny_input(tmp_path, n_train=48)
    out = run(cfg(student, train={"max_steps": 12, "epochs": 3}), inp)
    assert out.artifact == inp.workdir
    model = AutoModelForCausalLM.from_pretrained(inp.workdir)  # a plain HF folder
    assert model.config.hidden_size == 16
    assert read_meta(inp.workdir)["stage"] == "distill"
    # trained as <bos> prompt <think> cot: slm serve's chat prompt must end with <think> too
    assert read_meta(inp.workdir)["reasoning_marker"] == "<think>"
    assert not (inp.workdir / "checkpoints").exists()
    m = out.metrics
    assert m["steps"] == 12 and m["examples"] == 96
    assert m["tokens_student"] > 0 and m["tokens_supervised"] > 0 and m["tokens_teacher"] > 0
    assert m["flops_student"] == 6 * m["student_parameters"] * m["tokens_student"]
    assert m["flops_teacher"] == 2 * m["teacher_parameters"] * m["tokens_teacher"]
    assert m["wall_time_s"] > 0 and m["peak_rss_mb"] > 0 and m["tokens_per_s"] > 0
    assert "distill" in out.extra["report_md"]


def test_training_reduces_the_kd_loss(tmp_path):
    inp, student = tiny_input(tmp_path, n_train=64)
    out = run(cfg(student, teacher={"mode": "online"}, train={"max_steps": 16, "epochs": 2, "lr": 1e-2}), inp)
    hist = out.metrics
    assert hist["final_loss"] < 0.8 * first_loss(tmp_path, student, inp)


def first_loss(tmp_path, student, inp):
    wd = tmp_path / "probe"
    wd.mkdir()
    inp.workdir = wd
    return run(cfg(student, teacher={"mode": "online"}, train={"max_steps": 1, "lr": 1e-9}), inp).metrics["final_loss"]


def test_truncation_removes_compute_and_full_batches_keep_memory(tmp_path):
    inp, student = tiny_input(tmp_path, n_train=64, steps=4)
    full = run(cfg(student, train={"max_steps": 8}), inp).metrics
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    inp.workdir = tmp_path / "a"
    half = run(cfg(student, truncate={"fraction": 0.5}, train={"max_steps": 8}), inp).metrics
    inp.workdir = tmp_path / "b"
    mixed = run(cfg(student, truncate={"fraction": 0.5, "full_batches": 0.25}, train={"max_steps": 8}), inp).metrics
    assert half["tokens_student"] < 0.6 * full["tokens_student"]
    assert half["flops_student"] < 0.6 * full["flops_student"]
    assert half["tokens_supervised"] < 0.6 * full["tokens_supervised"]
    assert half["tokens_student"] < mixed["tokens_student"] < full["tokens_student"]


@pytest.mark.parametrize(
    "truncate",
    [
        {"fraction": 0.5, "full_batches": 0.25, "schedule": "end"},
        {"fraction": 0.5, "full_batches": 0.25, "mixing": "example"},
        {"fraction": 0.5, "mode": "cot_only", "fraction_start": 0.25},
    ],
    ids=["end-loaded", "per-example", "cot-only-growing"],
)
def test_protocol_variants_run_end_to_end_within_the_truncated_cost(tmp_path, truncate):
    inp, student = tiny_input(tmp_path, n_train=64, steps=4)
    full = run(cfg(student, train={"max_steps": 8}), inp).metrics
    (tmp_path / "v").mkdir()
    inp.workdir = tmp_path / "v"
    out = run(cfg(student, truncate=truncate, train={"max_steps": 8}), inp)
    m = out.metrics
    assert m["steps"] == 8 and torch.isfinite(torch.tensor(m["final_loss"]))
    assert 0 < m["tokens_student"] < full["tokens_student"]
    assert "Truncation: first" in out.extra["report_md"]


def test_padding_rows_are_sliced_and_other_tokenizers_refused(tmp_path):
    inp, student = tiny_input(tmp_path, n_train=16, student_rows=5)  # 5 padding rows in the student
    out = run(cfg(student, train={"max_steps": 2}), inp)
    assert out.metrics["steps"] == 2
    other = tiny_model(tmp_path / "other", 16, 1, seed=3, tokenizer=build_demo_tokenizer(chars="0123456789+-=;"))
    (tmp_path / "w2").mkdir()
    inp.workdir = tmp_path / "w2"
    with pytest.raises(VocabularyMismatch, match="different tokenizers"):
        run(cfg(other, train={"max_steps": 2}), inp)
    assert not (tmp_path / "w2" / "checkpoints").exists()


def test_on_policy_samples_and_teacher_scores(tmp_path):
    inp, student = tiny_input(tmp_path, n_train=16)
    out = run(cfg(student, on_policy={"fraction": 1.0, "max_new_tokens": 6}, train={"max_steps": 2}), inp)
    m = out.metrics
    assert m["tokens_generated"] > 0 and m["tokens_teacher"] > 0 and m["tokens_supervised"] > 0
    assert torch.isfinite(torch.tensor(m["final_loss"]))


def test_healing_stage_reuses_the_teacher_cache(tmp_path):
    inp, student = tiny_input(tmp_path, n_train=24)
    first = run(cfg(student, train={"max_steps": 3}), inp)
    assert first.metrics["tokens_teacher"] > 0
    (tmp_path / "02").mkdir()
    inp.artifact, inp.workdir = first.artifact, tmp_path / "02"
    heal = run(DistillConfig.model_validate(BASE | {"student": "previous", "supervise": ["answer"]}), inp)
    assert heal.metrics["tokens_teacher"] == 0  # every target came from the cache


def _worker(tmp, workdir, config, out, kill_after=None):
    args = [sys.executable, str(HERE / "distill_worker.py"), str(tmp), workdir, json.dumps(config), str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(
        args + ([str(kill_after)] if kill_after is not None else []),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # three model runs in two fresh processes: ~25-50 s on the shared 2-core CPU
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    config = {
        "truncate": {"fraction": 0.5, "full_batches": 0.25},
        "train": {"batch_size": 8, "max_steps": 8, "lr": 3e-3, "checkpoint_every": 2},
    }
    inp, student = tiny_input(tmp_path, n_train=48, workdir="ref")  # the same models as the workers'
    ref = run(DistillConfig.model_validate(config | {"student": str(student)}), inp)
    (tmp_path / "ref.json").write_text(json.dumps({"metrics": ref.metrics}))
    killed = _worker(tmp_path, "res", config, tmp_path / "res.json", kill_after=5)
    assert killed.returncode == -9
    ckpt = tmp_path / "run" / "res" / "checkpoints" / "last"
    assert json.loads((ckpt / "trainer.json").read_text())["step"] == 4
    resumed = _worker(tmp_path, "res", config, tmp_path / "res.json")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "ref.json").read_text())["metrics"]
    b = json.loads((tmp_path / "res.json").read_text())["metrics"]
    assert a["final_loss"] == pytest.approx(b["final_loss"], rel=1e-4)
    for key in ("steps", "tokens_student", "tokens_supervised", "examples"):
        assert a[key] == b[key], key
    wa = load_file(str(tmp_path / "run" / "ref" / "model.safetensors"))
    wb = load_file(str(tmp_path / "run" / "res" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_a_diverging_run_fails_instead_of_saving_nan_weights(tmp_path):
    inp, student = tiny_input(tmp_path, n_train=16)
    with pytest.raises(FloatingPointError, match="the loss is nan at step"):
        # an infinite learning rate turns the weights to NaN after the first update;
        # the KD loss of step 2 is then NaN: the stage must stop, not save the weights
        run(cfg(student, teacher={"mode": "online"}, train={"max_steps": 3, "lr": 1e30, "clip": None}), inp)
    assert not (inp.workdir / "model.safetensors").exists()
