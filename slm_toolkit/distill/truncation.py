"""Truncation: keep only the first part of each sequence, *before* batching (so the compute
really goes away), and choose which whole batches stay untruncated.

- `head` (the paper): the first `fraction` of the tokens (or the first `tokens` tokens).
- `keep_answer`: the same budget, but the end of the sequence from the CoT's closing marker
  onward (`</think>` answer `<eos>`) is always kept and the cut falls inside the CoT, so the
  student still sees (and is trained to write) the answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from slm_toolkit.data.example import ANSWER, COT


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
    if mode != "keep_answer":
        raise ValueError(f"unknown truncation mode {mode!r}: expected head or keep_answer")
    tail_start = _tail_start(segments)
    tail = n - tail_start
    head = max(0, keep - tail)
    head = min(head, tail_start)
    return list(ids[:head]) + list(ids[tail_start:]), list(segments[:head]) + list(segments[tail_start:])


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
