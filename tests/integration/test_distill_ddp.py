"""Data parallel and sharded: 2 processes (torchrun, gloo on CPU), with DDP or with FSDP2
(`train.fsdp: true`), match 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distill_helpers import tiny_input
from safetensors.torch import load_file

from slm_toolkit.distill.config import DistillConfig
from slm_toolkit.distill.stage import run

HERE = Path(__file__).parent
CONFIG = {
    "truncate": {"fraction": 0.5, "full_batches": 0.25},
    "loss": {"ce_weight": 0.2},
    "train": {"batch_size": 8, "grad_accum": 2, "max_steps": 4, "lr": 3e-3, "warmup": 0.0},
}


def _torchrun(tmp: Path, workdir: str, config: dict) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    args = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        str(HERE / "distill_worker.py"),
        str(tmp),
        workdir,
        json.dumps(config),
        str(tmp / f"{workdir}.json"),
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_process(tmp_path, parallel):
    config = CONFIG | {"train": CONFIG["train"] | {"fsdp": parallel == "fsdp"}}
    inp, student = tiny_input(tmp_path, n_train=48, workdir="single")
    single = run(DistillConfig.model_validate(config | {"student": str(student)}), inp).metrics
    proc = _torchrun(tmp_path, parallel, config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / f"{parallel}.json").read_text())
    assert result["wrapper"] == {"ddp": "DistributedDataParallel", "fsdp": "FSDPStudentLoss"}[parallel]
    ddp = result["metrics"]
    assert ddp["final_loss"] == pytest.approx(single["final_loss"], rel=1e-5)
    assert ddp["tokens_student"] == pytest.approx(single["tokens_student"], rel=0.05)  # padding differs
    assert ddp["tokens_supervised"] == single["tokens_supervised"]
    w1 = load_file(str(tmp_path / "run" / "single" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "run" / parallel / "model.safetensors"))
    changed = 0
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)
        changed += int(not torch.equal(w1[k], load_file(str(tmp_path / "student" / "model.safetensors"))[k]))
    assert changed > 0  # the weights were updated, identically
