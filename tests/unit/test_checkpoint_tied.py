"""The distill trainer's checkpoints hold a student with tied embeddings (SmolLM2, Llama-3.2)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from slm_toolkit.distill.trainer import load_checkpoint, save_checkpoint


def _tied(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def test_checkpoint_round_trip_with_tied_embeddings(tmp_path):
    model = _tied(0)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    opt.step()
    save_checkpoint(tmp_path / "last", model, opt, {"step": 1})
    other = _tied(1)
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-2)
    info = load_checkpoint(tmp_path / "last", other, other_opt)
    assert info["step"] == 1
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), name
    assert other.lm_head.weight.data_ptr() == other.model.embed_tokens.weight.data_ptr()  # still tied
