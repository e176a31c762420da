"""Batches of (possibly truncated) sequences, planned deterministically from the seed.

A *step* is one optimizer step over a global batch of `batch_size` examples. Every process
builds the same plan, takes its contiguous share of each global batch and splits it into
micro-batches (grad_accum of them; an untruncated batch of a truncated run is split further,
so that its micro-batches are no longer than a truncated one and peak memory stays at the
truncated level). Sequences are cut *before* collation and each micro-batch is padded only to
its own longest sequence. An example whose supervised tokens were all cut away is dropped from
the forward and counted (`Step.empty`). The loss denominator is the number of supervised
tokens in the whole global batch, known to every process without communication.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from slm_toolkit.data.example import TokenizedExample
from slm_toolkit.distill.masks import label_weights
from slm_toolkit.distill.truncation import full_batch_splits, is_full_batch, truncate


def sequence_key(ids: Sequence[int]) -> str:
    """Content key of a token sequence (teacher-cache lookups)."""
    return hashlib.sha1(np.asarray(ids, dtype=np.int32).tobytes()).hexdigest()[:20]


@dataclass
class Kept:
    """One sequence as it will be forwarded. Its teacher targets are the first len(ids) - 1
    positions of the cached sequence `cache_key` (the full sequence for head truncation, whose
    kept part is a prefix; the spliced sequence itself for keep_answer)."""

    ids: list[int]
    segments: list[int]
    weights: list[float]  # per position 0..n-2
    cache_key: str


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [b, L] right-padded to the longest in this micro-batch
    attention_mask: torch.Tensor  # [b, L]
    rows: torch.Tensor  # [n] row of each supervised position
    cols: torch.Tensor  # [n] column of each supervised position (predicts cols + 1)
    labels: torch.Tensor  # [n]
    weights: torch.Tensor  # [n]
    cache_keys: list[str]  # per row
    real_tokens: int  # tokens that are not padding

    @property
    def tokens(self) -> int:
        """Positions the forward pass computes (padding included): the compute actually spent."""
        return int(self.input_ids.numel())

    @property
    def flat_positions(self) -> torch.Tensor:
        return self.rows * self.input_ids.shape[1] + self.cols


@dataclass
class Step:
    index: int
    epoch: int
    full: bool  # an untruncated batch in a truncated run
    denom: int  # supervised positions in the global batch
    examples: int  # examples in the global batch
    empty: int  # of which with no supervised token left after the cut
    online: bool = False  # on-policy: scored by the live teacher even when the run uses a cache
    micro: list[MicroBatch] = field(default_factory=list)  # this process's micro-batches


def total_steps(n_examples: int, batch_size: int, epochs: int, max_steps: int | None) -> int:
    steps = epochs * math.ceil(n_examples / batch_size)
    return min(steps, max_steps) if max_steps else steps


def plan_steps(
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    grad_accum: int,
    epochs: int,
    seed: int,
    weight_table: Mapping[int, float],
    pad_id: int,
    fraction: float | None = None,
    tokens: int | None = None,
    mode: str = "head",
    full_batches: float = 0.0,
    rank: int = 0,
    world: int = 1,
    max_steps: int | None = None,
) -> Iterator[Step]:
    """Yield the run's steps in order (lazily; the same on every process)."""
    truncating = fraction is not None or tokens is not None
    last = total_steps(len(examples), batch_size, epochs, max_steps)
    index = 0
    for epoch in range(epochs):
        order = list(range(len(examples)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        for lo in range(0, len(order), batch_size):
            if index >= last:
                return
            batch = [examples[i] for i in order[lo : lo + batch_size]]
            full = truncating and is_full_batch(index, full_batches)
            cut = None if full else (fraction, tokens)
            kept = [keep_sequence(ex, cut, mode, weight_table) for ex in batch]
            splits = grad_accum
            if full:
                splits *= full_batch_splits(fraction, tokens, max(len(ex.ids) for ex in batch))
            step = Step(
                index=index,
                epoch=epoch,
                full=full,
                denom=sum(sum(w > 0 for w in k.weights) for k in kept),
                examples=len(batch),
                empty=sum(not any(w > 0 for w in k.weights) for k in kept),
            )
            mine = [k for k in _share(kept, world)[rank] if any(w > 0 for w in k.weights)]
            step.micro = [collate(part, pad_id) for part in _share(mine, splits)]
            yield step
            index += 1


def keep_sequence(
    ex: TokenizedExample, cut: tuple[float | None, int | None] | None, mode: str, table: Mapping[int, float]
) -> Kept:
    """The kept part of one example (cut before batching) with its per-position weights."""
    if cut is None:
        ids, segs = list(ex.ids), list(ex.segments)
    else:
        ids, segs = truncate(ex.ids, ex.segments, fraction=cut[0], tokens=cut[1], mode=mode)
    spliced = mode == "keep_answer" and ids != list(ex.ids[: len(ids)])
    key = sequence_key(ids if spliced else ex.ids)
    return Kept(ids=ids, segments=segs, weights=label_weights(segs, table), cache_key=key)


def _share(items: list, parts: int) -> list[list]:
    """Split into `parts` contiguous, nearly equal lists (some may be empty)."""
    bounds = [round(i * len(items) / parts) for i in range(parts + 1)]
    return [items[bounds[i] : bounds[i + 1]] for i in range(parts)]


def collate(seqs: Sequence[Kept], pad_id: int) -> MicroBatch:
    """Right-pad to the longest sequence of this micro-batch. No sequences -> a one-token dummy
    with nothing supervised (keeps every process running the same number of micro-batches)."""
    if not seqs:
        z = torch.zeros(0, dtype=torch.long)
        return MicroBatch(
            torch.full((1, 1), pad_id), torch.ones(1, 1, dtype=torch.long), z, z, z, torch.zeros(0), [], 0
        )
    width = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    rows, cols, labels, weights = [], [], [], []
    for r, s in enumerate(seqs):
        ids[r, : len(s.ids)] = torch.tensor(s.ids)
        mask[r, : len(s.ids)] = 1
        for t, w in enumerate(s.weights):
            if w > 0:
                rows.append(r)
                cols.append(t)
                labels.append(s.ids[t + 1])
                weights.append(w)
    as_long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return MicroBatch(
        ids,
        mask,
        as_long(rows),
        as_long(cols),
        as_long(labels),
        torch.tensor(weights, dtype=torch.float32),
        [s.cache_key for s in seqs],
        sum(len(s.ids) for s in seqs),
    )


def cache_sequences(
    examples: Sequence[TokenizedExample], *, fraction: float | None, tokens: int | None, mode: str
) -> dict[str, list[int]]:
    """Every sequence whose teacher targets the run may need, by key: the full sequences (head
    truncation reads their prefixes) and, for keep_answer, the spliced ones."""
    out = {sequence_key(ex.ids): list(ex.ids) for ex in examples}
    if mode == "keep_answer" and (fraction is not None or tokens is not None):
        for ex in examples:
            ids, _ = truncate(ex.ids, ex.segments, fraction=fraction, tokens=tokens, mode=mode)
            out.setdefault(sequence_key(ids), ids)
    return out
