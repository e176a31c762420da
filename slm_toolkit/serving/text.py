"""Token ids → text deltas for one request, with OpenAI stop strings.

Incremental detokenization over a sliding window (the prefix/read-offset scheme vLLM and TGI
use): each token decodes only the ids since the last committed piece, with one piece of left
context so that tokenizers which drop a leading space at the start of a decode stay exact.
Cost per token is constant, not proportional to the output so far (decoding the whole output
each time, as HF's TextStreamer does, is quadratic in the output length). Text that may still
become a stop string or an incomplete UTF-8 character is held back. Stop strings are not checked before
`min_tokens` tokens, as in vLLM. The stop string itself is not returned (OpenAI).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache


class TextAssembler:
    def __init__(self, decode: Callable[[list[int]], str], stops: list[str], min_tokens: int = 0, lazy: bool = False):
        self._decode, self._stops, self._min_tokens = decode, stops, min_tokens
        self._lazy = lazy and not stops  # nobody reads deltas: decode once, in flush
        self._max_stop = max((len(s) for s in stops), default=0)
        self.ids: list[int] = []
        self._sent = 0
        self._text = ""  # committed text: every id before self._read, decoded
        self._prefix = self._read = 0  # ids[_prefix:_read] is the left context of the next decode
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Take one generated token; return the text that is now safe to send."""
        self.ids.append(token_id)
        if self._lazy:
            return ""
        self._commit(final=False)
        if self._stops and len(self.ids) >= self._min_tokens:
            cut = self._find_stop()
            if cut is not None:
                self.stopped = True
                return self._send(cut)
        safe = len(self._text)
        safe -= self._partial_stop(safe)
        return self._send(safe)

    def flush(self) -> str:
        """The held-back rest, at the end of generation."""
        if self.stopped:
            return ""
        if self._lazy:
            self._text = self._decode(self.ids)
        else:
            self._commit(final=True)
        return self._send(len(self._text))

    def _commit(self, final: bool) -> None:
        """Append the text of the ids after the read offset, unless it ends in an incomplete
        multi-byte character (held until the next token completes it, or `final`)."""
        context = self._decode(self.ids[self._prefix : self._read]) if self._read > self._prefix else ""
        text = self._decode(self.ids[self._prefix :])
        if len(text) > len(context) and (final or not text.endswith("\ufffd")):
            self._text += text[len(context) :]
            self._prefix, self._read = self._read, len(self.ids)

    def _send(self, upto: int) -> str:
        if upto <= self._sent:
            return ""
        delta = self._text[self._sent : upto]
        self._sent = upto
        return delta

    def _find_stop(self) -> int | None:
        start = max(0, self._sent - self._max_stop + 1)  # a stop must overlap unsent text
        hits = [i for i in (self._text.find(s, start) for s in self._stops) if i >= 0]
        return min(hits) if hits else None

    def _partial_stop(self, end: int) -> int:
        """Length of the longest tail of text[:end] that begins some stop string."""
        if not self._stops or len(self.ids) < self._min_tokens:
            return 0
        for k in range(min(self._max_stop - 1, end - self._sent), 0, -1):
            tail = self._text[end - k : end]
            if any(s.startswith(tail) for s in self._stops):
                return k
        return 0


def token_bytes(tokenizer, token: int, text: str) -> list[int]:
    """The UTF-8 bytes a token stands for (OpenAI's logprobs `bytes`). `text` is its decoded text;
    a token holding part of a character decodes to U+FFFD, so its raw bytes come from its vocabulary
    entry instead: byte-level BPE (GPT-2's byte-to-character map) or a byte-fallback piece `<0xNN>`."""
    if "\ufffd" not in text:
        return list(text.encode("utf-8"))
    piece = tokenizer.convert_ids_to_tokens(token)
    if isinstance(piece, str):
        if m := _BYTE_PIECE.fullmatch(piece):
            return [int(m.group(1), 16)]
        table = _unicode_to_byte()
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        if type(decoder).__name__ == "ByteLevel" and piece and all(c in table for c in piece):
            return [table[c] for c in piece]
    return list(text.encode("utf-8"))


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@cache
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for
    the characters from U+0100 on, in order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in keep}
    n = 0
    for b in range(256):
        if b not in keep:
            table[chr(256 + n)] = b
            n += 1
    return table
