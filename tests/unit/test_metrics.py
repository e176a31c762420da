"""The shared metrics on tiny models and scripted generators."""

from __future__ import annotations

import math

import pytest
import torch

from slm_toolkit.data.example import COT, Example
from slm_toolkit.data.segments import prompt_ids, tokenize_example
from slm_toolkit.demo.builtin import build_model
from slm_toolkit.demo.task import generate_examples
from slm_toolkit.demo.tokenizer import build_demo_tokenizer
from slm_toolkit.measures import metrics as M
from slm_toolkit.runtime.torch import TorchGenerator

ARCH = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def tok():
    return build_demo_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_model(ARCH, tok, max_positions=128, seed=0).eval()


@pytest.fixture(scope="module")
def examples():
    return generate_examples(6, 0, steps=2, digits=1, ops="+-", verify=0)


class Scripted:
    """A Generator that 'writes' given texts, recording the configs it was called with."""

    backend, eos_token_id, pad_token_id, max_length = "fake", 2, 0, 10_000

    def __init__(self, tok, answers: dict[tuple[int, ...], str]):
        self.tok, self.answers, self.configs, self.batches = tok, answers, [], []

    def generate(self, input_ids, config):
        self.configs.append(config)
        self.batches.append(len(input_ids))
        outs = []
        for ids in input_ids:
            text = self.answers.get(tuple(ids), "1+1=2")
            outs.append(self.tok(text, add_special_tokens=False)["input_ids"][: config.max_new_tokens])
        return outs


def test_count_parameters_counts_tied_weights_once(tok):
    untied = build_model(ARCH, tok, 64, 0)
    assert M.count_parameters(untied) == sum(p.numel() for p in untied.parameters())
    tied = build_model(dict(ARCH, tie_word_embeddings=True), tok, 64, 0)
    emb = tied.get_input_embeddings().weight.numel()
    assert M.count_parameters(tied) == M.count_parameters(untied) - emb


def test_bytes_on_disk_counts_model_files_only(tmp_path, model, tok):
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    size = M.bytes_on_disk(tmp_path)
    assert size >= (tmp_path / "model.safetensors").stat().st_size
    (tmp_path / "slm_meta.json").write_text("{}" * 100)
    (tmp_path / "report.md").write_text("x" * 1000)
    (tmp_path / ".ckpt").mkdir()
    (tmp_path / ".ckpt" / "state.safetensors").write_bytes(b"0" * 5000)
    assert M.bytes_on_disk(tmp_path) == size
    (tmp_path / "extra.safetensors").write_bytes(b"0" * 123)
    assert M.bytes_on_disk(tmp_path) == size + 123


def test_onnx_parameter_count(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((3, 4), np.float32), "w")
    b = numpy_helper.from_array(np.zeros((4,), np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[w, b],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "model.onnx"))
    assert M.onnx_parameter_count(tmp_path) == 16


def test_exact_match_and_answer_rate(tok, examples):
    script = {}
    for i, ex in enumerate(examples):
        key = tuple(prompt_ids(tok, ex.prompt))
        if i < 3:
            script[key] = f"{ex.cot}</think>{ex.answer}"  # right
        elif i == 3:
            script[key] = f"{ex.cot}</think>{int(ex.answer) + 1}"  # wrong
        else:
            script[key] = ex.cot  # never answers
    gen = Scripted(tok, script)
    out = M.exact_match(gen, tok, examples, max_new_tokens=200, batch_size=4)
    assert out["accuracy"] == pytest.approx(3 / 6)
    assert out["answer_rate"] == pytest.approx(4 / 6)
    assert out["n"] == 6
    assert gen.batches == [4, 2] and all(c.temperature == 0.0 for c in gen.configs)


def test_generation_budget_fits_the_longest_reference(tok, examples):
    budget = M.generation_budget(tok, examples)
    longest = max(len(tokenize_example(tok, ex).ids) - len(prompt_ids(tok, ex.prompt)) for ex in examples)
    assert longest + 8 <= budget <= 2 * longest + 8


def test_exact_match_on_a_real_model_in_any_batch_size(tok, model, examples):
    gen = TorchGenerator(model, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    a = M.generate_answers(gen, tok, examples, 12, batch_size=6)
    b = M.generate_answers(gen, tok, examples, 12, batch_size=1)
    assert a == b  # batching and length-sorting do not change results or their order
    out = M.exact_match(gen, tok, examples, 12, batch_size=3)
    assert 0.0 <= out["accuracy"] <= out["answer_rate"] <= 1.0


def test_segment_perplexity_matches_masked_loss(tok, model, examples):
    out = M.segment_perplexity(model, tok, examples, batch_size=4)
    assert set(out) == {f"{k}_{s}" for k in ("nll", "ppl") for s in ("prompt", "cot", "answer")}
    # reference: transformers' own loss with labels only on the CoT tokens, one example at a time
    total, count = 0.0, 0
    for ex in examples:
        t = tokenize_example(tok, ex)
        ids = torch.tensor([t.ids])
        labels = torch.tensor([[i if s == COT else -100 for i, s in zip(t.ids, t.segments)]])
        n = int((labels[0, 1:] != -100).sum())
        with torch.no_grad():
            total += model(ids, labels=labels).loss.item() * n
        count += n
    assert out["nll_cot"] == pytest.approx(total / count, rel=1e-4)
    assert out["ppl_cot"] == pytest.approx(math.exp(out["nll_cot"]))


def test_segment_perplexity_skips_empty_segments(tok, model):
    out = M.segment_perplexity(model, tok, [Example(prompt="1+1=", cot="", answer="2")])
    assert "nll_cot" not in out and "nll_answer" in out


def test_decode_latency(tok):
    gen = Scripted(tok, {})
    out = M.decode_latency(gen, [1, 7, 8], new_tokens=4, repeats=5, warmup=2)
    assert len(gen.configs) == 7
    assert all(c.ignore_eos and c.min_new_tokens == c.max_new_tokens == 4 for c in gen.configs)
    assert out["latency_ms_min"] <= out["latency_ms_median"] <= out["latency_ms_max"]
    assert 0.0 <= out["latency_ms_spread"] <= out["latency_ms_max"] - out["latency_ms_min"]
    assert out["new_tokens"] == 4 and out["tok_s"] > 0


def test_decode_latency_real_model_produces_exact_tokens(tok, model):
    gen = TorchGenerator(model, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    out = M.decode_latency(gen, [tok.bos_token_id, 8, 9], new_tokens=10, repeats=2)
    assert out["new_tokens"] == 10 and out["latency_ms_median"] > 0
