"""Width pruning on tiny GQA Llamas (hidden 64, 4 heads / 2 KV heads of 16, built from config)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from slm_toolkit.data.example import TEMPLATE
from slm_toolkit.data.segments import tokenize_example
from slm_toolkit.demo.task import generate_examples
from slm_toolkit.demo.tokenizer import build_demo_tokenizer
from slm_toolkit.prune.importance import CRITERIA, calibration_batches, weight_scores
from slm_toolkit.prune.width import kv_group_scores, lowest, mlp_channel_scores, plan_width, prune_width


@pytest.fixture(scope="module")
def tok():
    return build_demo_tokenizer()


@pytest.fixture(scope="module")
def batches(tok):
    ex = generate_examples(n=6, seed=0, steps=2, digits=1, ops="+-", verify=0)
    return calibration_batches(tok, ex, samples=6, batch_size=3)


def tiny(tok, intermediate=128, kv=2, heads=4, layers=2, tied=False, seed=0):
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def test_plan_counts_round_to_and_impossible_ratios(tok):
    config = tiny(tok, intermediate=100, kv=4, heads=8).config
    plan = plan_width(config, heads=0.25, mlp=0.5, hidden=0.3, round_to=8)
    assert plan.kv_heads_removed == 1
    assert plan.intermediate_keep == 48 and plan.hidden_keep == 40  # multiples of 8, at least the ratio removed
    assert plan_width(config, heads=0.1, mlp=0, hidden=0, round_to=8).kv_heads_removed == 1  # rounds up to a group
    with pytest.raises(ValueError, match="prune.heads: 0.9 would remove all 4 KV heads"):
        plan_width(config, heads=0.9, mlp=0, hidden=0, round_to=8)
    with pytest.raises(ValueError, match="prune.mlp"):
        plan_width(config, heads=0, mlp=0.95, hidden=0, round_to=8)


def test_calibration_masks_template_tokens(tok, batches):
    ex = generate_examples(n=1, seed=0, steps=2, digits=1, ops="+-", verify=0)[0]
    t = tokenize_example(tok, ex)
    row_labels = batches[0].labels[0, : len(t.ids)]
    for label, tid, seg in zip(row_labels.tolist(), t.ids, t.segments):
        assert label == (-100 if seg == TEMPLATE else tid)
    assert (batches[0].labels[~batches[0].attention_mask.bool()] == -100).all()  # padding


def test_gqa_head_and_mlp_pruning_equals_masking(tok, batches):
    """Removing a KV group = zeroing its query heads' o_proj columns; removing MLP channels = zeroing
    their down_proj columns. The pruned model must compute exactly the masked original."""
    model = tiny(tok)
    masked = tiny(tok)
    scores = weight_scores(model, "magnitude", batches)
    plan = plan_width(model.config, heads=0.5, mlp=0.25, hidden=0, round_to=8)
    with torch.no_grad():
        for i, layer in enumerate(masked.model.layers):
            (g,) = lowest(kv_group_scores(scores, f"model.layers.{i}.self_attn", 2, 16), 1)
            layer.self_attn.o_proj.weight[:, g * 32 : (g + 1) * 32] = 0
            ch = lowest(mlp_channel_scores(scores, f"model.layers.{i}.mlp"), 32)
            layer.mlp.down_proj.weight[:, ch] = 0
    shape = prune_width(model, plan, scores, "magnitude", batches[0].input_ids[:1])

    assert shape == {
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "intermediate_size": 96,
        "hidden_size": 64,
    }
    for layer in model.model.layers:
        a = layer.self_attn
        assert (a.q_proj.out_features, a.k_proj.out_features, a.v_proj.out_features, a.o_proj.in_features) == (
            32,
            16,
            16,
            32,
        )
        assert (
            layer.mlp.gate_proj.out_features == layer.mlp.up_proj.out_features == layer.mlp.down_proj.in_features == 96
        )
    assert model.config.num_attention_heads % model.config.num_key_value_heads == 0
    torch.testing.assert_close(logits(model, batches[0]), logits(masked, batches[0]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_hidden_pruning_reloads_exactly(tok, batches, tmp_path, tied):
    model = tiny(tok, tied=tied)
    scores = weight_scores(model, "activation", batches)
    plan = plan_width(model.config, heads=0.5, mlp=0.5, hidden=0.25, round_to=8)
    prune_width(model, plan, scores, "activation", batches[0].input_ids[:1])
    assert model.model.embed_tokens.embedding_dim == model.lm_head.in_features == 48
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.hidden_size == 48 and reloaded.config.head_dim == 16
    assert torch.equal(logits(model, batches[0]), logits(reloaded, batches[0]))
    out = reloaded.generate(batches[0].input_ids[:1, :5], max_new_tokens=4, do_sample=False, use_cache=True)
    assert out.shape[1] == 9


@pytest.mark.parametrize("criterion", CRITERIA)
def test_each_criterion_finds_planted_unimportant_structures(tok, batches, criterion):
    """A KV group and 8 MLP channels scaled down 1000x in every layer must be the ones removed
    (a random choice would hit them with probability 1/2 per layer and ~1e-10 for the channels)."""
    model = tiny(tok, seed=1)
    weak_kv, weak_ch = 1, list(range(40, 48))
    with torch.no_grad():
        for layer in model.model.layers:
            a, mlp = layer.self_attn, layer.mlp
            a.q_proj.weight[32:64] *= 1e-3
            a.k_proj.weight[16:32] *= 1e-3
            a.v_proj.weight[16:32] *= 1e-3
            a.o_proj.weight[:, 32:64] *= 1e-3
            mlp.gate_proj.weight[weak_ch] *= 1e-3
            mlp.up_proj.weight[weak_ch] *= 1e-3
            mlp.down_proj.weight[:, weak_ch] *= 1e-3
    scores = weight_scores(model, criterion, batches)
    for i in range(2):
        assert lowest(kv_group_scores(scores, f"model.layers.{i}.self_attn", 2, 16), 1) == [weak_kv]
        assert lowest(mlp_channel_scores(scores, f"model.layers.{i}.mlp"), 8) == weak_ch


def test_criteria_rank_differently(tok, batches):
    model = tiny(tok)
    ranks = {
        c: torch.argsort(mlp_channel_scores(weight_scores(model, c, batches), "model.layers.0.mlp")) for c in CRITERIA
    }
    assert not torch.equal(ranks["magnitude"], ranks["taylor"])
    assert not torch.equal(ranks["magnitude"], ranks["activation"])
