"""Tiny teacher/student folders and data for the distill tests (built from config, no download)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from slm_toolkit.data.example import DataBundle
from slm_toolkit.demo.task import generate_examples
from slm_toolkit.demo.tokenizer import build_demo_tokenizer
from slm_toolkit.stage import StageInput


def tiny_model(folder: Path, hidden: int, layers: int, seed: int, extra_rows: int = 0, tokenizer=None) -> Path:
    if (folder / "config.json").exists():  # made earlier (e.g. by the parent of a subprocess test)
        return folder
    tok = tokenizer or build_demo_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok) + extra_rows,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def tiny_input(tmp: Path, n_train: int = 24, steps: int = 2, student_rows: int = 0, workdir: str = "01-distill.tmp"):
    teacher = tiny_model(tmp / "teacher", 32, 2, seed=1)
    student = tiny_model(tmp / "student", 16, 1, seed=2, extra_rows=student_rows)
    train = generate_examples(n_train, seed=0, steps=steps, digits=1, ops="+-", verify=0)
    evals = generate_examples(8, seed=1, steps=steps, digits=1, ops="+-", verify=0)
    data = DataBundle(train=train, eval=evals, source="builtin:arith-cot", options={"task": {}, "seed": 0})
    wd = tmp / "run" / workdir
    wd.mkdir(parents=True, exist_ok=True)
    return StageInput(
        artifact=teacher, model=teacher, data=data, workdir=wd, run_dir=tmp / "run", device="cpu", seed=0
    ), student
