"""Token ids → text deltas for one request, with OpenAI stop strings.

Incremental detokenization by decoding the whole output each time (outputs are short;
this is what HF's TextStreamer does too), holding back text that may still become a stop
string or an incomplete UTF-8 character. Stop strings are not checked before
`min_tokens` tokens, as in vLLM. The stop string itself is not returned (OpenAI).
"""

from __future__ import annotations

from typing import Callable


class TextAssembler:
    def __init__(self, decode: Callable[[list[int]], str], stops: list[str], min_tokens: int = 0,
                 lazy: bool = False):
        self._decode, self._stops, self._min_tokens = decode, stops, min_tokens
        self._lazy = lazy and not stops  # nobody reads deltas: decode once, in flush
        self._max_stop = max((len(s) for s in stops), default=0)
        self.ids: list[int] = []
        self._sent = 0
        self._text = ""
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Take one generated token; return the text that is now safe to send."""
        self.ids.append(token_id)
        if self._lazy:
            return ""
        self._text = self._decode(self.ids)
        if self._stops and len(self.ids) >= self._min_tokens:
            cut = self._find_stop()
            if cut is not None:
                self.stopped = True
                return self._send(cut)
        safe = len(self._text)
        if self._text.endswith("\ufffd"):  # an incomplete multi-byte character
            safe -= 1
        safe -= self._partial_stop(safe)
        return self._send(safe)

    def flush(self) -> str:
        """The held-back rest, at the end of generation."""
        if self.stopped:
            return ""
        if self._lazy:
            self._text = self._decode(self.ids)
        return self._send(len(self._text))

    def _send(self, upto: int) -> str:
        if upto <= self._sent:
            return ""
        delta = self._text[self._sent:upto]
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
            tail = self._text[end - k:end]
            if any(s.startswith(tail) for s in self._stops):
                return k
        return 0
