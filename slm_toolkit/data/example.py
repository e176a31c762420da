"""The one data type every stage sees: a reasoning example split into three segments."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

# Per-token segment ids. Every token of a tokenized example carries exactly one.
TEMPLATE = 0
PROMPT = 1
COT = 2
ANSWER = 3
SEGMENT_NAMES = {TEMPLATE: "template", PROMPT: "prompt", COT: "cot", ANSWER: "answer"}
SEGMENT_IDS = {name: sid for sid, name in SEGMENT_NAMES.items()}


@dataclass(frozen=True)
class Example:
    prompt: str
    cot: str
    answer: str


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids and, aligned with them, one segment id per token (TEMPLATE/PROMPT/COT/ANSWER)."""

    ids: list[int]
    segments: list[int]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.segments):
            raise ValueError("ids and segments must have the same length")


@dataclass
class DataBundle:
    """The recipe's data, loaded once: train and eval examples plus where they came from."""

    train: list[Example]
    eval: list[Example]
    source: str
    options: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """A hash of the content of every example, train then eval (not of where they came from)."""
        h = hashlib.sha256()
        for part, examples in (("train", self.train), ("eval", self.eval)):
            h.update(f"{part} {len(examples)}\n".encode())
            for ex in examples:
                h.update(json.dumps([ex.prompt, ex.cot, ex.answer], ensure_ascii=False).encode())
                h.update(b"\n")
        return h.hexdigest()[:16]
