"""Logprobs `bytes` of a token that holds part of a UTF-8 character: its raw bytes, not U+FFFD's."""

from __future__ import annotations

from chat_helpers import chat_bpe

from slm_toolkit.serving.text import token_bytes


def test_partial_character_tokens_give_their_raw_bytes():
    tok = chat_bpe(["a b c", "plain ascii only"])  # byte-level BPE: '€' is three single-byte tokens
    ids = tok("€", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3
    texts = [tok.decode([i]) for i in ids]
    assert all(t == "\ufffd" for t in texts)
    got = [token_bytes(tok, i, t) for i, t in zip(ids, texts)]
    assert got == [[0xE2], [0x82], [0xAC]]
    assert bytes(b for bs in got for b in bs).decode("utf-8") == "€"
    whole = tok("abc", add_special_tokens=False)["input_ids"][0]
    assert token_bytes(tok, whole, tok.decode([whole])) == list(tok.decode([whole]).encode())


class _Fallback:  # a sentencepiece-style byte-fallback vocabulary entry
    def convert_ids_to_tokens(self, token):
        return "<0xE2>"


def test_byte_fallback_pieces():
    assert token_bytes(_Fallback(), 7, "\ufffd") == [0xE2]
