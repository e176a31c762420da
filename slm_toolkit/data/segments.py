"""Tokenize an Example into ids plus one segment id per token (TEMPLATE/PROMPT/COT/ANSWER).

Every piece of the sequence (each template piece, the prompt, the CoT, the answer) is tokenized
SEPARATELY (add_special_tokens=False) and the ids are concatenated. So every token belongs to
exactly one segment, and decoding the tokens of a segment gives back exactly that segment's
text. (Tokenizing the joined string would let a BPE merge straddle a boundary.)

The layout of a sequence:
- with a chat template (`tokenizer.chat_template` set): the messages
  [user: prompt, assistant: "<think>" + cot + "</think>" + answer] rendered with sentinel
  strings in place of prompt/cot/answer, split at the sentinels; the text between is TEMPLATE.
  The sequence ends at the first EOS the template writes (or an EOS is appended). Templates
  that drop the reasoning of assistant turns (DeepSeek-R1 style) fall back to the user turn
  with the generation prompt, then `<think>` CoT `</think>` A `<eos>`.
- without: `<bos>` P `<think>` CoT `</think>` A `<eos>`. `<bos>` is left out if the tokenizer
  has none; `<think>`/`</think>` are one token each where the vocabulary has them, else the
  literal strings are tokenized (as TEMPLATE).

`prompt_ids(tokenizer, prompt)` is the prefix up to and including the template that opens the
CoT: the generation prompt. Generated text is split back with `split_generation`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Union

from slm_toolkit.data.example import (
    ANSWER,
    COT,
    PROMPT,
    SEGMENT_IDS,
    SEGMENT_NAMES,
    TEMPLATE,
    Example,
    TokenizedExample,
)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Strings that end a generated answer (decoded with skip_special_tokens=False).
DEFAULT_END_MARKERS = ("<eos>", "<pad>", "</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>")

_SENTINELS = {PROMPT: "\u27e6SLM-PROMPT\u27e7", COT: "\u27e6SLM-COT\u27e7", ANSWER: "\u27e6SLM-ANSWER\u27e7"}

# A layout is a list of (segment, content): TEMPLATE pieces carry text or token ids; PROMPT,
# COT and ANSWER carry None (the slot the example's text goes in).
Piece = tuple[int, Union[str, list[int], None]]


def tokenize_example(tokenizer, ex: Example) -> TokenizedExample:
    """ids + per-token segment ids for one example (see the module docstring for the layout)."""
    return tokenize_examples(tokenizer, [ex])[0]


def tokenize_examples(tokenizer, examples: Sequence[Example]) -> list[TokenizedExample]:
    """`tokenize_example` for many examples at once (template rendered once, texts batch-encoded)."""
    layout = sequence_layout(tokenizer)
    fixed = {i: _encode_one(tokenizer, content) for i, (seg, content) in enumerate(layout) if seg == TEMPLATE}
    texts = {
        PROMPT: _encode_many(tokenizer, [ex.prompt for ex in examples]),
        COT: _encode_many(tokenizer, [ex.cot for ex in examples]),
        ANSWER: _encode_many(tokenizer, [ex.answer for ex in examples]),
    }
    out = []
    for k in range(len(examples)):
        ids: list[int] = []
        segs: list[int] = []
        for i, (seg, _) in enumerate(layout):
            piece = fixed[i] if seg == TEMPLATE else texts[seg][k]
            ids += piece
            segs += [seg] * len(piece)
        out.append(TokenizedExample(ids=ids, segments=segs))
    return out


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The generation prompt: tokenize_example's ids up to where the model starts the CoT."""
    ids: list[int] = []
    for seg, content in sequence_layout(tokenizer):
        if seg == COT:
            return ids
        ids += _encode_one(tokenizer, prompt if seg == PROMPT else content)
    raise AssertionError("a sequence layout always has a CoT slot")


def split_generation(text: str, end_markers: Iterable[str] = DEFAULT_END_MARKERS) -> tuple[str, str | None]:
    """(cot, answer) from generated text decoded with skip_special_tokens=False.

    The answer is the text after the first `</think>`, up to the first end marker, stripped of
    surrounding whitespace; None if `</think>` never appeared (the model never answered).
    """
    markers = [m for m in end_markers if m]
    if text.lstrip().startswith(THINK_OPEN):
        text = text.lstrip()[len(THINK_OPEN) :]
    cot, found, rest = text.partition(THINK_CLOSE)
    if not found:
        return _cut(cot, markers).strip(), None
    return cot.strip(), _cut(rest, markers).strip()


def sequence_layout(tokenizer) -> list[Piece]:
    """The pieces of a sequence for this tokenizer: chat template if it has one, else plain."""
    if getattr(tokenizer, "chat_template", None):
        return _chat_layout(tokenizer)
    return _plain_layout(tokenizer)


# ----- masks and per-segment helpers (plain lists; the distill stage turns them into tensors)


def segment_ids_for(names: Iterable[str]) -> set[int]:
    """{"cot", "answer"} -> {COT, ANSWER}; an unknown name raises ValueError naming the choices."""
    out = set()
    for name in names:
        if name not in SEGMENT_IDS:
            raise ValueError(f"unknown segment {name!r}; choose from {sorted(SEGMENT_IDS)}")
        out.add(SEGMENT_IDS[name])
    return out


def segment_mask(segments: Sequence[int], names: Iterable[str]) -> list[bool]:
    """True where the token's segment is one of `names` (e.g. ["cot", "answer"])."""
    wanted = segment_ids_for(names)
    return [s in wanted for s in segments]


def segment_counts(segments: Sequence[int]) -> dict[str, int]:
    """Tokens per segment name (every name present, 0 if absent)."""
    counts = {name: 0 for name in SEGMENT_IDS}
    for s in segments:
        counts[SEGMENT_NAMES[s]] += 1
    return counts


def segment_span(segments: Sequence[int], name: str) -> tuple[int, int]:
    """[start, end) of a segment's tokens ((n, n) if it has none). Segments are contiguous
    except TEMPLATE, for which this is the first-to-last range."""
    (sid,) = segment_ids_for([name])
    idx = [i for i, s in enumerate(segments) if s == sid]
    if not idx:
        return len(segments), len(segments)
    return idx[0], idx[-1] + 1


def segment_text(tokenizer, tok: TokenizedExample, name: str) -> str:
    """Decode the tokens of one segment (the inverse of tokenization, for checks and reports)."""
    (sid,) = segment_ids_for([name])
    ids = [i for i, s in zip(tok.ids, tok.segments) if s == sid]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


# ----- layouts


def _plain_layout(tokenizer) -> list[Piece]:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token: set one (sequences must end with EOS)")
    layout: list[Piece] = []
    if tokenizer.bos_token_id is not None:
        layout.append((TEMPLATE, [tokenizer.bos_token_id]))
    layout += [
        (PROMPT, None),
        (TEMPLATE, _marker(tokenizer, THINK_OPEN)),
        (COT, None),
        (TEMPLATE, _marker(tokenizer, THINK_CLOSE)),
        (ANSWER, None),
        (TEMPLATE, [tokenizer.eos_token_id]),
    ]
    return layout


def _marker(tokenizer, text: str) -> str | list[int]:
    """One token id where the vocabulary has the marker, else the literal text."""
    tid = tokenizer.convert_tokens_to_ids(text)
    if tid is None or (tid == tokenizer.unk_token_id and text != tokenizer.unk_token):
        return text
    return [tid]


def _chat_layout(tokenizer) -> list[Piece]:
    assistant = THINK_OPEN + _SENTINELS[COT] + THINK_CLOSE + _SENTINELS[ANSWER]
    messages = [{"role": "user", "content": _SENTINELS[PROMPT]}, {"role": "assistant", "content": assistant}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    if all(rendered.count(_SENTINELS[seg]) == 1 for seg in (PROMPT, COT, ANSWER)):
        layout: list[Piece] = []
        rest = rendered
        for seg in (PROMPT, COT, ANSWER):
            before, _, rest = rest.partition(_SENTINELS[seg])
            layout += [(TEMPLATE, before), (seg, None)]
        return layout + [(TEMPLATE, _end_with_eos(tokenizer, rest))]
    return _chat_generation_layout(tokenizer)


def _chat_generation_layout(tokenizer) -> list[Piece]:
    """For templates that drop or rewrite the reasoning of assistant turns (DeepSeek-R1 style):
    the user turn with the generation prompt, then `<think>` CoT `</think>` A `<eos>` as the
    model writes them."""
    messages = [{"role": "user", "content": _SENTINELS[PROMPT]}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if rendered.count(_SENTINELS[PROMPT]) != 1:
        raise ValueError(
            "the tokenizer's chat template does not render the prompt exactly once; cannot locate "
            "segments (use a tokenizer without a chat template, or fix the template)"
        )
    before, _, after = rendered.partition(_SENTINELS[PROMPT])
    opener = after if after.rstrip().endswith(THINK_OPEN) else after + THINK_OPEN
    return [
        (TEMPLATE, before),
        (PROMPT, None),
        (TEMPLATE, opener),
        (COT, None),
        (TEMPLATE, THINK_CLOSE),
        (ANSWER, None),
        (TEMPLATE, _end_with_eos(tokenizer, "")),
    ]


def _end_with_eos(tokenizer, tail: str) -> str | list[int]:
    eos = tokenizer.eos_token
    if eos is None:
        raise ValueError("the tokenizer has no eos_token: set one (sequences must end with EOS)")
    if eos in tail:
        return tail[: tail.index(eos) + len(eos)]  # generation stops at EOS: drop what follows
    return _encode_one(tokenizer, tail) + [tokenizer.eos_token_id]


# ----- encoding


def _encode_one(tokenizer, content: str | list[int] | None) -> list[int]:
    if isinstance(content, list):
        return list(content)
    if not content:
        return []
    return tokenizer(content, add_special_tokens=False)["input_ids"]


def _encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        # Same ids as tokenizer(texts, add_special_tokens=False), without the wrapper's per-text
        # Python overhead (about a quarter of the time on 20k short examples).
        return [enc.ids for enc in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _cut(text: str, markers: list[str]) -> str:
    cut = min((text.index(m) for m in markers if m in text), default=len(text))
    return text[:cut]
