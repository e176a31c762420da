"""The shared metrics on tiny models and scripted generators."""

from __future__ import annotations

import math

import pytest
import torch
from chat_helpers import chat_bpe

from slm_toolkit.data.example import COT, Example
from slm_toolkit.data.segments import prompt_ids, tokenize_example
from slm_toolkit.demo.builtin import build_model
from slm_toolkit.demo.task import generate_examples
from slm_toolkit.demo.tokenizer import build_demo_tokenizer
from slm_toolkit.measures import metrics as M
from slm_toolkit.measures import scoring as S
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


class StepOnly:
    """A backend that only has the protocol (no torch `model`): scoring goes through decode steps."""

    def __init__(self, gen):
        self.gen, self.pad_token_id, self.backend = gen, gen.pad_token_id, "stub"
        self.prefill, self.decode_step, self.select = gen.prefill, gen.decode_step, gen.select


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


def test_parameters_from_safetensors_headers_and_lineage(tmp_path, model, tok):
    from slm_toolkit.core.artifacts import write_meta

    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    assert M.safetensors_parameter_count(tmp_path / "hf") == M.count_parameters(model)
    assert M.safetensors_parameter_count(tmp_path) is None
    (tmp_path / "onnx").mkdir()
    (tmp_path / "int8").mkdir()
    write_meta(tmp_path / "onnx", kind="onnx", parent=str(tmp_path / "hf"))
    write_meta(tmp_path / "int8", kind="onnx", parent=str(tmp_path / "onnx"))
    assert M.lineage_parameter_count(tmp_path / "int8") == M.count_parameters(model)
    assert M.lineage_parameter_count(tmp_path / "hf") is None  # no parent


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
    out = S.segment_perplexity(model, tok, examples, batch_size=4)
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
    out = S.segment_perplexity(model, tok, [Example(prompt="1+1=", cot="", answer="2")])
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


def test_teacher_forced_forward_and_decode_steps_agree(tok, model, examples):
    gen = TorchGenerator(model, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    seqs = [tokenize_example(tok, ex).ids for ex in examples]
    prefixes = [s[:3] for s in seqs]
    conts = [s[3 : 3 + k] for k, s in zip((1, 5, 9, 0, 12, 7), seqs)]  # ragged, one empty
    fast = S.teacher_forced(gen, prefixes, conts, batch_size=4)
    slow = S.teacher_forced(StepOnly(gen), prefixes, conts, batch_size=4)
    for (lp_a, g_a), (lp_b, g_b), c in zip(fast, slow, conts):
        assert len(lp_a) == len(lp_b) == len(g_a) == len(c)
        assert lp_a == pytest.approx(lp_b, abs=1e-4) and (g_a == g_b).all()
    # one sequence alone: log p(c_0 | prefix) is the prefix's last-position log-softmax
    with torch.no_grad():
        logits = model(torch.tensor([prefixes[1]])).logits[0, -1]
    assert fast[1][0][0] == pytest.approx(float(torch.log_softmax(logits, -1)[conts[1][0]]), abs=1e-5)
    assert fast[1][1][0] == int(logits.argmax())


def test_segment_perplexity_without_torch_scores_what_follows_the_prompt(tok, model, examples):
    gen = TorchGenerator(model, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    full = S.segment_perplexity(gen, tok, examples)
    steps = S.segment_perplexity(StepOnly(gen), tok, examples)
    assert "ppl_prompt" in full and "ppl_prompt" not in steps
    assert steps["nll_cot"] == pytest.approx(full["nll_cot"], rel=1e-4)
    assert steps["nll_answer"] == pytest.approx(full["nll_answer"], rel=1e-4)


def test_greedy_agreement(tok, model, examples):
    gen = TorchGenerator(model, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    prompts = [prompt_ids(tok, ex.prompt) for ex in examples]
    own = M.greedy_generations(gen, tok, examples, max_new_tokens=10, batch_size=6)
    assert all(0 < len(o) <= 11 for o in own)
    assert S.greedy_agreement(StepOnly(gen), prompts, own) == 1.0  # its own greedy tokens, teacher-forced
    other = build_model(ARCH, tok, max_positions=128, seed=1).eval()
    share = S.greedy_agreement(other, prompts, own)
    with torch.no_grad():  # by hand: argmax of the other model at each position of the first continuation
        ids = torch.tensor([prompts[0] + own[0]])
        picks = other(ids).logits[0, len(prompts[0]) - 1 : -1].argmax(-1).tolist()
    first = sum(a == b for a, b in zip(picks, own[0]))
    assert 0.0 <= share < 1.0
    assert S.greedy_agreement(other, prompts[:1], own[:1]) == pytest.approx(first / len(own[0]))


def test_exact_match_for_a_chat_model_without_think_markers():
    chat = chat_bpe(["Q: 12 apples 3 pears #### 15 The answer is 15 dollars"] * 3)
    examples = [Example("12+3?", "12+3=15", "15"), Example("2*4?", "2*4=8", "8"), Example("1+1?", "1+1=2", "2")]
    script = {
        tuple(prompt_ids(chat, "12+3?")): "12+3=15\n#### 15<|im_end|>",  # GSM8K form
        tuple(prompt_ids(chat, "2*4?")): "2*4 is 8, so 8 dollars.<|im_end|>",  # the last number
        tuple(prompt_ids(chat, "1+1?")): "I do not know.<|im_end|>",  # no answer
    }
    out = M.exact_match(Scripted(chat, script), chat, examples, max_new_tokens=50)
    assert out["accuracy"] == pytest.approx(2 / 3) and out["answer_rate"] == pytest.approx(2 / 3)
