"""Depth pruning on a tiny GQA Llama (hidden 64, 4 heads / 2 KV heads, 4 layers, built from config)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from slm_toolkit.demo.task import generate_examples
from slm_toolkit.demo.tokenizer import build_demo_tokenizer
from slm_toolkit.prune.depth import block_distances, check_layers, drop_layers, least_important
from slm_toolkit.prune.importance import calibration_batches


@pytest.fixture(scope="module")
def tok():
    return build_demo_tokenizer()


@pytest.fixture(scope="module")
def batches(tok):
    ex = generate_examples(n=4, seed=0, steps=2, digits=1, ops="+-", verify=0)
    return calibration_batches(tok, ex, samples=4, batch_size=2)


def tiny(tok, layers=4):
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def make_near_identity(block, scale):
    """Scale the block's writes into the residual stream: the smaller, the less it changes its input."""
    with torch.no_grad():
        block.self_attn.o_proj.weight *= scale
        block.mlp.down_proj.weight *= scale


def test_distances_find_the_blocks_that_change_their_input_least(tok, batches):
    model = tiny(tok)
    make_near_identity(model.model.layers[2], 0.0)  # exactly the identity
    make_near_identity(model.model.layers[0], 0.01)
    d = block_distances(model, batches)
    assert len(d) == 4 and all(0.0 <= x <= 1.0 for x in d)
    assert d[2] < 1e-3 and d[2] < d[0] < min(d[1], d[3])
    assert least_important(d, 1) == [2]
    assert least_important(d, 2) == [0, 2]


def test_dropping_the_identity_block_keeps_outputs_and_the_model_generates(tok, batches, tmp_path):
    model = tiny(tok)
    make_near_identity(model.model.layers[1], 0.0)
    with torch.no_grad():
        before = model(input_ids=batches[0].input_ids, attention_mask=batches[0].attention_mask).logits
    kept = drop_layers(model, least_important(block_distances(model, batches), 1))
    assert kept == [0, 2, 3] and model.config.num_hidden_layers == 3 and len(model.model.layers) == 3
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1, 2]
    with torch.no_grad():
        after = model(input_ids=batches[0].input_ids, attention_mask=batches[0].attention_mask).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)  # the removed block did nothing

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 3
    prompt = batches[0].input_ids[:1, :6]
    cached = reloaded.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.shape[1] == 14 and torch.equal(cached, uncached)  # KV-cache slots renumbered correctly


def test_too_many_layers_is_an_error(tok):
    config = tiny(tok, layers=2).config
    check_layers(config, 1)
    with pytest.raises(ValueError, match="prune.layers: 2 would remove all 2 decoder layers"):
        check_layers(config, 2)
