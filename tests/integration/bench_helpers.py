"""A tiny served artifact for the bench tests (a 1-layer Llama, the demo tokenizer)."""

from __future__ import annotations

from pathlib import Path

import torch

from slm_toolkit.core.artifacts import write_meta
from slm_toolkit.demo.tokenizer import build_demo_tokenizer


def make_tiny(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_demo_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    # a demo-world model: chat prompts end with <think>, as slm serve reads from slm_meta.json
    write_meta(folder, kind="hf", reasoning_marker="<think>")
    return folder
