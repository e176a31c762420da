"""Chat messages -> prompt token ids.

- A tokenizer with a chat template: exactly `apply_chat_template(messages,
  add_generation_prompt=True)`, token for token, then the reasoning marker only when the model
  was trained with one (serving/artifact.reasoning_marker) and the template did not already
  write it.
- No chat template (the documented fallback): `<bos>`, then per turn the system / developer /
  user texts joined by a blank line, the marker (if the model has one), and for an assistant turn
  its text and `<eos>`:

      <bos> {system}\\n\\n{user} [marker] {assistant} <eos> {user} [marker]

  For a demo-world model (trained as `<bos> prompt <think> cot </think> answer <eos>`) one user
  message gives exactly its training prompt. A conversation that ends with an assistant message
  leaves that message open (no `<eos>`): the model continues it.

Content given as a list of text parts is joined without separator (OpenAI's rule).
"""

from __future__ import annotations

from collections.abc import Sequence

from slm_toolkit.serving.schemas import RequestError


class ChatFormat:
    def __init__(self, tokenizer, reasoning_marker: str | None = None):
        self.tokenizer = tokenizer
        self.marker = reasoning_marker
        self.templated = bool(getattr(tokenizer, "chat_template", None))
        self.marker_ids = self._plain(reasoning_marker) if reasoning_marker else []

    def _plain(self, text: str) -> list[int]:
        return encode(self.tokenizer, text, add_special_tokens=False) if text else []

    def prompt_ids(self, messages: Sequence) -> list[int]:
        """`messages`: objects with `.role` and `.text()` (schemas.ChatMessage)."""
        if not self.templated:
            return self._fallback(messages)
        convo = [{"role": m.role, "content": m.text()} for m in messages]
        try:  # rendered, then tokenized as apply_chat_template(tokenize=True) does: no special tokens added
            text = self.tokenizer.apply_chat_template(convo, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # noqa: BLE001 - a template may refuse a conversation (jinja raise_exception)
            raise RequestError(f"messages: the model's chat template refused them: {exc}", param="messages") from None
        ids = encode(self.tokenizer, text, add_special_tokens=False)
        m = self.marker_ids
        if m and ids[-len(m) :] != m:
            ids += m
        return ids

    def _fallback(self, messages: Sequence) -> list[int]:
        tok = self.tokenizer
        ids = [tok.bos_token_id] if tok.bos_token_id is not None else []
        turn: list[str] = []
        last = len(messages) - 1
        for i, msg in enumerate(messages):
            if msg.role != "assistant":
                turn.append(msg.text())
                continue
            ids += self._plain("\n\n".join(turn)) + self.marker_ids + self._plain(msg.text())
            if i < last and tok.eos_token_id is not None:
                ids.append(tok.eos_token_id)
            turn = []
        if turn:
            ids += self._plain("\n\n".join(turn)) + self.marker_ids
        return ids


def encode(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    """`tokenizer(text)["input_ids"]` without the wrapper's per-call Python work: the Rust
    tokenizer directly when it has no truncation or padding set (the same ids). encode_batch
    releases the GIL, so a long text tokenized in a worker thread does not stall the event loop."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
    return backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
