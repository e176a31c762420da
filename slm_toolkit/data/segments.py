"""Tokenize an Example into ids plus one segment id per token (TEMPLATE/PROMPT/COT/ANSWER).

Every piece of the sequence (each template piece, the prompt, the CoT, the answer) is tokenized
SEPARATELY (add_special_tokens=False) and the ids are concatenated. So every token belongs to
exactly one segment, and decoding the tokens of a segment gives back exactly that segment's
text. (Tokenizing the joined string would let a BPE merge straddle a boundary.)

Two reasoning formats (`uses_think_markers`): models whose vocabulary or chat template has
`<think>`/`</think>` (the demo world, R1-style models), and every tokenizer without a chat
template, write `<think>` CoT `</think>` A. Other chat models (SmolLM2, Llama-Instruct, ...)
were never trained with those markers: for them the CoT is followed by `ANSWER_MARK`
("\n#### ", GSM8K's own form) and the answer.

The layout of a sequence:
- with a chat template (`tokenizer.chat_template` set): the messages
  [user: prompt, assistant: <reasoning body>] rendered with sentinel strings in place of
  prompt/cot/answer, split at the sentinels; the text between is TEMPLATE. So the prompt is the
  user turn plus the assistant prefix, as `add_generation_prompt=True` renders it. The sequence
  ends at the first EOS the template writes (or an EOS is appended). Templates that drop the
  reasoning of assistant turns (DeepSeek-R1 style) fall back to the user turn with the
  generation prompt, then the reasoning body and `<eos>`.
- without: `<bos>` P `<think>` CoT `</think>` A `<eos>`. `<bos>` is left out if the tokenizer
  has none; `<think>`/`</think>` are one token each where the vocabulary has them, else the
  literal strings are tokenized (as TEMPLATE).

`prompt_ids(tokenizer, prompt)` is the prefix up to and including the template that opens the
CoT: the generation prompt. Generated text is split back with `split_generation` (think format)
or `extract_answer` (both formats).
"""

from __future__ import annotations

import re
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
ANSWER_MARK = "\n#### "  # between CoT and answer for chat models without reasoning markers
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
    """(cot, answer) from generated text decoded with skip_special_tokens=False (think format).

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


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str, think: bool, end_markers: Iterable[str] = DEFAULT_END_MARKERS) -> str | None:
    """The answer in generated text (decoded with skip_special_tokens=False), or None.

    think=True (the model writes `</think>`): `split_generation`'s answer, None without the marker.
    think=False (a chat model that never writes it): the first number after the last `####`
    (GSM8K's form; the rest of that line if it holds no number), else the last number in the
    text; None when there is no number at all. `data.answers.normalize_answer` then compares
    "1,000", "$1000" and "1000.0" as equal.
    """
    if think:
        return split_generation(text, end_markers)[1]
    text = _cut(text, [m for m in end_markers if m])
    head, found, tail = text.rpartition("####")
    if found:
        line = tail.strip().split("\n", 1)[0].strip()
        number = _NUMBER.search(line)
        return number.group(0) if number else (line or None)
    numbers = _NUMBER.findall(tail)  # no "####": rpartition leaves the whole text in tail
    return numbers[-1].rstrip(".") if numbers else None


def uses_think_markers(tokenizer) -> bool:
    """True when sequences use `<think>` CoT `</think>` A: tokenizers without a chat template
    (the demo world's plain layout), and chat models whose vocabulary has `</think>` as one token
    or whose template mentions it. Other chat models write CoT, `ANSWER_MARK`, A."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return True
    if THINK_CLOSE in str(template) or THINK_OPEN in str(template):
        return True
    return isinstance(_marker(tokenizer, THINK_CLOSE), list)


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


def _reasoning_body(think: bool) -> tuple[str, str]:
    """(text before the CoT, text between CoT and answer) inside the assistant turn."""
    return (THINK_OPEN, THINK_CLOSE) if think else ("", ANSWER_MARK)


def _chat_layout(tokenizer) -> list[Piece]:
    opener, separator = _reasoning_body(uses_think_markers(tokenizer))
    assistant = opener + _SENTINELS[COT] + separator + _SENTINELS[ANSWER]
    messages = [{"role": "user", "content": _SENTINELS[PROMPT]}, {"role": "assistant", "content": assistant}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    if all(rendered.count(_SENTINELS[seg]) == 1 for seg in (PROMPT, COT, ANSWER)):
        layout: list[Piece] = []
        rest = rendered
        for seg in (PROMPT, COT, ANSWER):
            before, _, rest = rest.partition(_SENTINELS[seg])
            layout += [(TEMPLATE, before), (seg, None)]
        return layout + [(TEMPLATE, _end_with_eos(tokenizer, rest))]
    return _chat_generation_layout(tokenizer, opener, separator)


def _chat_generation_layout(tokenizer, opener: str, separator: str) -> list[Piece]:
    """For templates that drop or rewrite the reasoning of assistant turns (DeepSeek-R1 style):
    the user turn with the generation prompt, then the reasoning body and `<eos>` as the model
    writes them."""
    messages = [{"role": "user", "content": _SENTINELS[PROMPT]}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if rendered.count(_SENTINELS[PROMPT]) != 1:
        raise ValueError(
            "the tokenizer's chat template does not render the prompt exactly once; cannot locate "
            "segments (use a tokenizer without a chat template, or fix the template)"
        )
    before, _, after = rendered.partition(_SENTINELS[PROMPT])
    if opener and not after.rstrip().endswith(opener):
        after += opener
    return [
        (TEMPLATE, before),
        (PROMPT, None),
        (TEMPLATE, after),
        (COT, None),
        (TEMPLATE, separator),
        (ANSWER, None),
        (TEMPLATE, _end_with_eos(tokenizer, "")),
    ]


def _end_with_eos(tokenizer, tail: str) -> str | list[int]:
    """The template's text after the answer, up to and including the turn's end token.

    Cut at the tokenizer's EOS when the template writes it, else at the first known end-of-turn
    marker it writes (a tokenizer converted from GGUF may name the wrong EOS), else EOS appended."""
    eos = tokenizer.eos_token
    if eos is None:
        raise ValueError("the tokenizer has no eos_token: set one (sequences must end with EOS)")
    ends = [m for m in (eos, *DEFAULT_END_MARKERS) if m in tail]
    if ends:
        end = min(ends, key=tail.index) if eos not in tail else eos
        return tail[: tail.index(end) + len(end)]  # generation stops at EOS: drop what follows
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
