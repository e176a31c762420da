"""Truncation: keep only the first part of each sequence, *before* batching (so the compute
really goes away), and choose which batches or examples stay untruncated, and when.

Modes (where the cut falls, for a budget of `keep` tokens):
- `head` (the paper): the first `keep` tokens.
- `keep_answer`: the end of the sequence from the CoT's closing marker onward (`</think>`
  answer `<eos>`) is always kept and the cut falls inside the CoT, so the student still sees
  (and is trained to write) the answer.
- `cot_only`: only the CoT is cut. The prompt is always whole; the answer part is kept when
  prompt + answer fit in `keep` (the CoT's head gets the rest), else the sequence is a prefix
  of max(keep, prompt) tokens.

`Cut` is the typed value a truncated run passes around (built from the recipe's
`TruncateConfig` only when `TruncateConfig.active`; no truncation = no `Cut`). It answers, for
step i of n: the kept fraction (constant, or growing from `fraction_start` to `fraction`),
whether the whole batch stays untruncated (by `schedule`) and, with `mixing: example`, which of
its examples do. Every answer is a function of (step, position), so every process and a
resumed run make the same choices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from slm_toolkit.data.example import ANSWER, COT, PROMPT
from slm_toolkit.distill.config import TruncateConfig

SPLICING_MODES = ("keep_answer", "cot_only")  # modes whose kept part is not a prefix


@dataclass(frozen=True)
class Cut:
    """How a truncated run cuts its sequences (exactly one of `fraction`, `tokens`)."""

    fraction: float | None = None
    tokens: int | None = None
    mode: str = "head"
    full_share: float = 0.0  # share of the batches (mixing batch) or examples (mixing example) left whole
    schedule: str = "uniform"  # uniform | front | end: where the whole batches go
    mixing: str = "batch"  # batch | example
    fraction_start: float | None = None  # the kept fraction grows from here to `fraction`

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.tokens is None):
            raise ValueError("a Cut needs exactly one of `fraction` and `tokens`")

    @classmethod
    def of(cls, cfg: TruncateConfig) -> Cut | None:
        """The run's cut, or None when the recipe truncates nothing."""
        if not cfg.active:
            return None
        return cls(
            fraction=cfg.fraction,
            tokens=cfg.tokens,
            mode=cfg.mode,
            full_share=cfg.full_batches,
            schedule=cfg.schedule,
            mixing=cfg.mixing,
            fraction_start=cfg.fraction_start,
        )

    @property
    def splices(self) -> bool:
        """Whether a kept sequence can differ from a prefix of the full one (its teacher targets
        then come from the kept sequence itself, not from the full sequence's prefix)."""
        return self.mode in SPLICING_MODES

    def fraction_at(self, step: int, total: int) -> float | None:
        """The kept fraction at `step` of `total` (None for a token budget)."""
        if self.fraction is None or self.fraction_start is None:
            return self.fraction
        progress = step / (total - 1) if total > 1 else 1.0
        return self.fraction_start + (self.fraction - self.fraction_start) * progress

    def full_batch(self, step: int, total: int) -> bool:
        """Whether the whole batch of `step` stays untruncated (`mixing: batch` only)."""
        if self.mixing != "batch" or self.full_share <= 0:
            return False
        if self.schedule == "uniform":
            return is_full_batch(step, self.full_share)
        n_full = round(self.full_share * total)
        return step < n_full if self.schedule == "front" else step >= total - n_full

    def full_examples(self, first: int, count: int) -> list[bool]:
        """Which of the `count` examples numbered first.. (in training order) stay whole
        (`mixing: example`: exactly a share `full_share` of them, evenly spread)."""
        if self.mixing != "example":
            return [False] * count
        return [is_full_batch(first + i, self.full_share) for i in range(count)]

    def describe(self) -> str:
        """One line for reports: what is kept, how, and what stays whole."""
        if self.fraction_start is not None:
            kept = f"first {self.fraction_start:.0%} growing to {self.fraction:.0%}"
        elif self.fraction is not None:
            kept = f"first {self.fraction:.0%}"
        else:
            kept = f"first {self.tokens} tokens"
        whole = (
            f", {self.full_share:.0%} of the {'batches' if self.mixing == 'batch' else 'examples'} whole"
            + (f" ({self.schedule})" if self.mixing == "batch" else "")
            if self.full_share > 0
            else ""
        )
        return f"{kept} (mode {self.mode}{whole})"


def keep_length(n: int, fraction: float | None, tokens: int | None) -> int:
    """How many of `n` tokens survive the cut (at least 1); n when nothing is set."""
    if fraction is not None:
        return max(1, min(n, int(math.floor(fraction * n + 0.5))))
    if tokens is not None:
        return max(1, min(n, tokens))
    return n


def truncate(
    ids: Sequence[int],
    segments: Sequence[int],
    *,
    fraction: float | None,
    tokens: int | None,
    mode: str = "head",
) -> tuple[list[int], list[int]]:
    """The kept ids and segment ids of one sequence."""
    n = len(ids)
    keep = keep_length(n, fraction, tokens)
    if keep >= n:
        return list(ids), list(segments)
    if mode == "head":
        return list(ids[:keep]), list(segments[:keep])
    if mode not in SPLICING_MODES:
        raise ValueError(f"unknown truncation mode {mode!r}: expected head, keep_answer or cot_only")
    tail_start = _tail_start(segments)
    tail = n - tail_start
    if mode == "keep_answer":
        head = min(max(0, keep - tail), tail_start)
    else:  # cot_only
        prompt = _prompt_end(segments)
        if prompt + tail > keep:  # the answer does not fit: a prefix, never shorter than the prompt
            return list(ids[: max(keep, prompt)]), list(segments[: max(keep, prompt)])
        head = min(keep - tail, tail_start)
    return list(ids[:head]) + list(ids[tail_start:]), list(segments[:head]) + list(segments[tail_start:])


def _prompt_end(segments: Sequence[int]) -> int:
    """Index just after the prompt and its closing template token (`<think>`): the CoT's start."""
    last_prompt = max((i for i, s in enumerate(segments) if s == PROMPT), default=-1)
    first_cot = next((i for i, s in enumerate(segments) if s == COT), None)
    if first_cot is not None:
        return first_cot
    return last_prompt + 1


def _tail_start(segments: Sequence[int]) -> int:
    """Index just after the last CoT token (the closing marker, answer and end are the tail)."""
    last_cot = max((i for i, s in enumerate(segments) if s == COT), default=None)
    if last_cot is not None:
        return last_cot + 1
    first_answer = next((i for i, s in enumerate(segments) if s == ANSWER), len(segments))
    return first_answer


def is_full_batch(index: int, share: float) -> bool:
    """Whether batch `index` is left untruncated: exactly `share` of the batches, evenly spaced
    (deterministic, so a resumed or multi-process run makes the same choice)."""
    if share <= 0:
        return False
    return math.floor((index + 1) * share) > math.floor(index * share)


def full_batch_splits(fraction: float | None, tokens: int | None, longest: int) -> int:
    """Micro-batches per truncated micro-batch for an untruncated batch, so that its micro-batches
    are no longer (in tokens) than a truncated one: ceil(1 / fraction), or ceil(longest / tokens)."""
    if fraction is not None:
        return max(1, math.ceil(1.0 / fraction - 1e-9))
    if tokens is not None:
        return max(1, math.ceil(longest / tokens))
    return 1
