"""The onnxruntime backend against the torch backend on optimum exports of tiny Llamas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from slm_toolkit.core.errors import BackendUnavailable
from slm_toolkit.models.onnx_export import export_onnx
from slm_toolkit.runtime.base import GenerationConfig
from slm_toolkit.runtime.loader import load_generator
from slm_toolkit.runtime.onnxruntime import OrtGenerator, load_onnx_generator
from slm_toolkit.runtime.ort_fused import FusedOrtGenerator
from slm_toolkit.runtime.torch import TorchGenerator

PROMPTS = [[1, 5, 6, 7, 8, 9, 10], [1, 11], [1, 20, 21, 22, 23], [1, 30, 31]]
GREEDY = GenerationConfig(max_new_tokens=10, ignore_eos=True)


def tiny_llama(head_dim=None) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim or 16,
        max_position_embeddings=128,
        eos_token_id=2,
        pad_token_id=0,
        bos_token_id=1,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # decisive argmax: no near-ties between backends
    return model


@pytest.fixture(scope="module", params=[None, 32, 8], ids=["full", "head_pruned_fused", "head_pruned_plain"])
def pair(request, tmp_path_factory):
    """(torch generator, hf folder, onnx folder). head_dim 32 and 8 differ from 64 // 4 (the
    head-pruned case); GroupQueryAttention needs head_dim % 16 == 0, so 8 runs the plain graph."""
    root = tmp_path_factory.mktemp("ort")
    model = tiny_llama(request.param)
    model.save_pretrained(root / "hf")
    export_onnx(root / "hf", root / "onnx", optimize="none")
    return TorchGenerator(model), root / "hf", root / "onnx"


def test_loader_picks_onnxruntime_and_explains(pair):
    _, hf, onnx = pair
    gen = load_generator(onnx, threads=1)
    fused = gen.head_dim % 16 == 0
    assert isinstance(gen, FusedOrtGenerator if fused else OrtGenerator) and gen.sliced
    with pytest.raises(BackendUnavailable, match="use backend='onnxruntime'"):
        load_generator(onnx, backend="torch")
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        load_generator(onnx, device="cuda")


def test_logits_and_greedy_match_torch(pair):
    tg, _, onnx = pair
    og = load_generator(onnx, threads=1)
    lt, _ = tg.prefill(PROMPTS)
    lo, _ = og.prefill(PROMPTS)
    np.testing.assert_allclose(lo, lt, atol=1e-4)
    batched = og.generate(PROMPTS, GREEDY)
    assert batched == tg.generate(PROMPTS, GREEDY)
    assert batched == [og.generate([p], GREEDY)[0] for p in PROMPTS]


def test_merge_select_and_score_match_torch(pair):
    tg, _, onnx = pair
    og = load_generator(onnx, threads=1)
    results = []
    for g in (tg, og):
        la, a = g.prefill(PROMPTS[:2])
        lb, b = g.prefill(PROMPTS[2:])
        la, a = g.decode_step(la.argmax(-1).tolist(), a)
        logits, merged = g.decode_step([3, 4, 5, 6], g.merge([a, b]))
        kept, _ = g.decode_step([7, 8], g.select(merged, [2, 0]))
        results.append((logits, kept))
    np.testing.assert_allclose(results[1][0], results[0][0], atol=1e-4)
    np.testing.assert_allclose(results[1][1], results[0][1], atol=1e-4)
    cands = [[7, 8, 9], [10], [], [11, 12]]
    np.testing.assert_allclose(og.score([1, 4, 5], cands), tg.score([1, 4, 5], cands), atol=1e-3)


def test_fused_is_forced_or_refused(pair, tmp_path):
    _, _, onnx = pair
    gen = load_onnx_generator(onnx, threads=1, fused=False)
    assert isinstance(gen, OrtGenerator)
    if load_generator(onnx, threads=1).head_dim % 16:
        with pytest.raises(ValueError, match="multiple of 16"):
            load_onnx_generator(onnx, threads=1, fused=True)


def test_unsliced_graph_gives_same_logits(pair):
    import onnxruntime as ort

    from slm_toolkit.runtime.ort_common import read_json, session_options

    _, _, onnx = pair
    plain = OrtGenerator(
        ort.InferenceSession(str(onnx / "model.onnx"), session_options(1)), read_json(onnx / "config.json")
    )
    sliced = load_generator(onnx, threads=1)
    assert not plain.sliced and sliced.sliced
    np.testing.assert_allclose(plain.prefill(PROMPTS)[0], sliced.prefill(PROMPTS)[0], atol=1e-5)
    assert plain.score([1, 2, 3], [[4, 5, 6]]) == pytest.approx(sliced.score([1, 2, 3], [[4, 5, 6]]), abs=1e-4)


@pytest.mark.parametrize("scheme", ["ort_int8_dynamic", "ort_int8_static", "ort_int4"])
def test_quantized_variants_load_and_stay_close(pair, tmp_path, scheme):
    from slm_toolkit.quantize.ort import quantize_onnx

    tg, _, onnx = pair
    for name in ("config.json", "generation_config.json"):
        (tmp_path / name).write_bytes((onnx / name).read_bytes())
    quantize_onnx(onnx, tmp_path, scheme, block_size=16, calibration_prompts=PROMPTS)
    qg = load_generator(tmp_path, threads=1)
    assert qg.sliced  # the lm_head was found behind the quantized matmul
    # every scheme keeps the fast path when the model allows it (static QDQ used to fall back)
    assert isinstance(qg, FusedOrtGenerator) == (tg.model.config.head_dim % 16 == 0)
    if isinstance(qg, FusedOrtGenerator):  # the rewrite keeps the quantized projections as they are
        # one prompt at a time: int8 dynamic quantizes activations per tensor, so in a batch the
        # padding (left in one graph, right in the other) shifts the scales a little
        plain = load_onnx_generator(tmp_path, threads=1, fused=False)
        for p in PROMPTS:
            np.testing.assert_allclose(qg.prefill([p])[0], plain.prefill([p])[0], atol=1e-3)
            assert qg.generate([p], GREEDY) == plain.generate([p], GREEDY)
    lq, _ = qg.prefill(PROMPTS)
    lt, _ = tg.prefill(PROMPTS)
    rel = np.abs(lq - lt).max() / np.abs(lt).max()
    assert rel < 0.25, rel
    assert np.mean(lq.argmax(-1) == lt.argmax(-1)) >= 0.5
    out = qg.generate(PROMPTS, GREEDY)
    single = [qg.generate([p], GREEDY)[0] for p in PROMPTS]
    if scheme in ("ort_int4", "ort_int8_static"):  # fixed scales: batching changes nothing
        assert out == single
    else:  # per-tensor activation scales see the batch's padding: nearly always the same tokens
        assert np.mean([a == b for a, b in zip(out, single)]) >= 0.5


def test_fused_cache_buffers_grow_and_match_the_copying_path(pair):
    import onnxruntime as ort

    from slm_toolkit.runtime.ort_common import read_json, session_options
    from slm_toolkit.runtime.ort_fused import fused_graph

    _, _, onnx = pair
    config = read_json(onnx / "config.json")
    graph = fused_graph(onnx / "model.onnx", config)
    if graph is None or load_generator(onnx, threads=1).head_dim % 16:
        pytest.skip("this model runs the plain graph")
    session = ort.InferenceSession(graph, session_options(1))
    shared = FusedOrtGenerator(session, config)
    shared.capacity_step = 1  # grow (by copying) on every step
    copying = FusedOrtGenerator(session, config, share_buffer=False)
    long = GenerationConfig(max_new_tokens=20, ignore_eos=True)
    assert shared.generate(PROMPTS, long) == copying.generate(PROMPTS, long)
    _, state = shared.prefill(PROMPTS[:1])
    assert state.past[0].shape[2] == len(PROMPTS[0]) + 1
