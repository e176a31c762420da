"""The torch backend: batched == one-at-a-time, merge/select, score, sampling knobs, loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from slm_toolkit.core.errors import BackendUnavailable
from slm_toolkit.runtime.base import GenerationConfig
from slm_toolkit.runtime.loader import detect_kind, load_generator
from slm_toolkit.runtime.torch import TorchGenerator

VOCAB, EOS, PAD = 48, 2, 0


def tiny_llama(seed: int = 0, **kw) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=EOS,
        pad_token_id=PAD,
        bos_token_id=1,
    )
    cfg.update(kw)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    with torch.no_grad():  # a larger output scale makes argmax decisive (no near-ties)
        model.lm_head.weight.mul_(8.0)
    return model


PROMPTS = [[1, 5, 6, 7, 8, 9, 10], [1, 11], [1, 20, 21, 22, 23], [1, 30, 31]]


@pytest.fixture(scope="module")
def gen() -> TorchGenerator:
    return TorchGenerator(tiny_llama())


def hf_greedy(model, prompt, n):
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=n, do_sample=False, min_new_tokens=n, pad_token_id=PAD, eos_token_id=EOS
    )
    return out[0, len(prompt) :].tolist()


def test_batched_greedy_equals_one_at_a_time(gen):
    cfg = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    batched = gen.generate(PROMPTS, cfg)
    single = [gen.generate([p], cfg)[0] for p in PROMPTS]
    assert batched == single
    assert all(len(t) == 12 for t in batched)


def test_greedy_matches_transformers_generate(gen):
    cfg = GenerationConfig(max_new_tokens=10, ignore_eos=True)
    for p in PROMPTS[:2]:
        assert gen.generate([p], cfg)[0] == hf_greedy(gen.model, p, 10)


def test_prefill_logits_match_unpadded_forward(gen):
    logits, _ = gen.prefill(PROMPTS)
    for i, p in enumerate(PROMPTS):
        ref = gen.model(torch.tensor([p])).logits[0, -1].detach().numpy()
        np.testing.assert_allclose(logits[i], ref, atol=1e-4)


def test_merge_and_select_continue_like_separate_batches(gen):
    a_logits, a = gen.prefill(PROMPTS[:2])
    b_logits, b = gen.prefill(PROMPTS[2:])
    a_logits, a = gen.decode_step(a_logits.argmax(-1).tolist(), a)  # a is one step ahead of b
    merged = gen.merge([a, b])
    logits = np.concatenate([a_logits, b_logits])
    ref_a, ref_b = a, b
    ref_la, ref_lb = a_logits, b_logits
    for _ in range(3):
        nxt = logits.argmax(-1).tolist()
        logits, merged = gen.decode_step(nxt, merged)
        ref_la, ref_a = gen.decode_step(ref_la.argmax(-1).tolist(), ref_a)
        ref_lb, ref_b = gen.decode_step(ref_lb.argmax(-1).tolist(), ref_b)
        np.testing.assert_allclose(logits, np.concatenate([ref_la, ref_lb]), atol=1e-4)
    kept = gen.select(merged, [3, 0])
    k_logits, kept = gen.decode_step([5, 6], kept)
    full_logits, _ = gen.decode_step([6, 9, 9, 5], merged)
    np.testing.assert_allclose(k_logits, full_logits[[3, 0]], atol=1e-4)


def test_score_equals_full_forward_logprobs(gen):
    prompt = [1, 4, 5, 6]
    cands = [[7, 8, 9], [10], [11, 12], []]
    scores = gen.score(prompt, cands)
    for cand, s in zip(cands, scores):
        if not cand:
            assert s == 0.0
            continue
        ids = torch.tensor([prompt + cand])
        lp = torch.log_softmax(gen.model(ids).logits[0].double(), -1)
        ref = sum(lp[len(prompt) - 1 + j, t].item() for j, t in enumerate(cand))
        assert s == pytest.approx(ref, abs=1e-3)
    assert len(set(scores)) == len(scores)


def test_eos_min_new_tokens_and_stop_ids():
    gen = TorchGenerator(tiny_llama())
    probe = gen.generate([[1, 3]], GenerationConfig(max_new_tokens=5, ignore_eos=True))[0]
    first = probe[0]
    # stopping on the first generated token yields nothing (the stop token is not returned)
    assert gen.generate([[1, 3]], GenerationConfig(max_new_tokens=5, stop_token_ids=(first,)))[0] == []
    gen.eos_token_id = first
    gen.eos_token_ids = (first,)
    assert gen.generate([[1, 3]], GenerationConfig(max_new_tokens=5))[0] == []
    forced = gen.generate([[1, 3]], GenerationConfig(max_new_tokens=5, min_new_tokens=3))[0]
    assert len(forced) >= 3 and first not in forced[:3]


def test_every_eos_id_of_the_model_ends_a_sequence():
    """A config may list several EOS ids (e.g. Llama 3's end-of-text and end-of-turn): the second
    one ends generation like the first, is masked before min_new_tokens, and ignore_eos skips both."""
    model = tiny_llama()
    probe = TorchGenerator(model).generate([[1, 3]], GenerationConfig(max_new_tokens=5, ignore_eos=True))[0]
    first = probe[0]
    other = (first + 1) % model.config.vocab_size
    gen = TorchGenerator(model, eos_token_id=[other, first])
    assert gen.eos_token_id == other and gen.eos_token_ids == (other, first)
    assert gen.generate([[1, 3]], GenerationConfig(max_new_tokens=5))[0] == []
    forced = gen.generate([[1, 3]], GenerationConfig(max_new_tokens=5, min_new_tokens=3))[0]
    assert len(forced) >= 3 and not {first, other} & set(forced[:3])
    assert gen.generate([[1, 3]], GenerationConfig(max_new_tokens=5, ignore_eos=True))[0] == probe


def test_sampling_is_seeded_and_top_p_tiny_is_greedy(gen):
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.5, seed=7, ignore_eos=True)
    a = gen.generate(PROMPTS, cfg)
    assert a == gen.generate(PROMPTS, cfg)
    others = [
        gen.generate(PROMPTS, GenerationConfig(max_new_tokens=8, temperature=1.5, seed=s, ignore_eos=True))
        for s in range(1, 4)
    ]
    assert any(o != a for o in others)
    nucleus = gen.generate(
        PROMPTS, GenerationConfig(max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=3, ignore_eos=True)
    )
    assert nucleus == gen.generate(PROMPTS, GenerationConfig(max_new_tokens=8, ignore_eos=True))


def test_loader_opens_hf_folder_and_explains_wrong_backend(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path)
    assert detect_kind(tmp_path) == "hf"
    g = load_generator(tmp_path)
    assert g.backend == "torch" and g.eos_token_id == EOS
    ref = TorchGenerator(model).generate([PROMPTS[0]], GenerationConfig(max_new_tokens=6, ignore_eos=True))
    assert g.generate([PROMPTS[0]], GenerationConfig(max_new_tokens=6, ignore_eos=True)) == ref
    with pytest.raises(BackendUnavailable, match="export it first"):
        load_generator(tmp_path, backend="onnxruntime")
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        load_generator(tmp_path, backend="vllm")
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(BackendUnavailable, match="torch backend runs Hugging Face folders"):
        load_generator(tmp_path, backend="torch")
    with pytest.raises(BackendUnavailable, match="not a model artifact"):
        (tmp_path / "empty").mkdir()
        detect_kind(tmp_path / "empty")
