"""Locally built tokenizers: exact round trips, special tokens, save/load offline."""

from __future__ import annotations

from transformers import AutoTokenizer

from slm_toolkit.demo.task import generate_examples
from slm_toolkit.demo.tokenizer import SPECIAL_TOKENS, build_demo_tokenizer, train_bpe_tokenizer


def test_demo_tokenizer_is_character_level_and_round_trips():
    tok = build_demo_tokenizer()
    assert 25 <= len(tok) <= 40
    assert tok.model_input_names == ["input_ids", "attention_mask"]
    for name in ("pad", "bos", "eos", "unk"):
        assert getattr(tok, f"{name}_token") == f"<{name}>"
    for ex in generate_examples(50, 0, 6, 2, "+-*", 2):
        text = f"<bos>{ex.prompt}<think>{ex.cot}</think>{ex.answer}<eos>"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(ex.prompt) + len(ex.cot) + len(ex.answer) + 4  # one per char + 4 specials
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    assert tok.convert_ids_to_tokens(tok("12+3", add_special_tokens=False)["input_ids"]) == list("12+3")
    enc = tok("7+3")
    assert "token_type_ids" not in enc and enc["input_ids"][0] == tok.bos_token_id


def test_unknown_characters_map_to_unk():
    tok = build_demo_tokenizer()
    ids = tok("1 x", add_special_tokens=False)["input_ids"]
    assert ids == [tok.convert_tokens_to_ids("1"), tok.unk_token_id, tok.unk_token_id]


def test_demo_tokenizer_save_and_reload(tmp_path):
    tok = build_demo_tokenizer()
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "<bos>9-4=<think>9-4=5;check:5+4=9</think>5<eos>"
    assert again(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert again.decode(again(text, add_special_tokens=False)["input_ids"]) == text
    assert again.model_input_names == ["input_ids", "attention_mask"]
    assert again.get_vocab() == tok.get_vocab()
    assert set(SPECIAL_TOKENS) <= set(again.all_special_tokens)


def test_bpe_tokenizer_round_trips_any_text(tmp_path):
    texts = ["Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n", "Weng earns $12 an hour.  Twice!"] * 20
    tok = train_bpe_tokenizer(texts, vocab_size=400)
    assert len(tok) <= 400
    assert tok.convert_tokens_to_ids("<think>") != tok.unk_token_id
    sample = "  Ünïcode 😀 and\ttabs\n\nnew lines <<3*4=12>>12 "
    ids = tok(sample, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == sample
    assert len(tok(texts[0], add_special_tokens=False)["input_ids"]) < len(texts[0]) / 2  # merges learnt
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(sample, add_special_tokens=False)["input_ids"] == ids
    assert "token_type_ids" not in again(sample)
