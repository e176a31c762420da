"""Batches of (possibly truncated) sequences, planned deterministically from the seed.

A *step* is one optimizer step over a global batch of `batch_size` examples. Every process
builds the same plan (`plan_batches`: which examples, and how each is cut, at every step), takes
its contiguous share of each global batch and splits it into micro-batches (grad_accum of them;
untruncated sequences of a truncated run, a whole batch or single examples, go into further
micro-batches, so that none is longer than a truncated one and peak memory stays at the
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
from slm_toolkit.distill.truncation import Cut, full_batch_splits, truncate


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
    whole: int = 0  # of which untruncated in a truncated run (a whole batch, or mixing: example)
    online: bool = False  # on-policy: scored by the live teacher even when the run uses a cache
    micro: list[MicroBatch] = field(default_factory=list)  # this process's micro-batches


def total_steps(n_examples: int, batch_size: int, epochs: int, max_steps: int | None) -> int:
    steps = epochs * math.ceil(n_examples / batch_size)
    return min(steps, max_steps) if max_steps else steps


# How one example of a step is cut: (fraction, tokens), or None for the whole sequence.
Budget = tuple[float | None, int | None] | None


@dataclass(frozen=True)
class BatchPlan:
    index: int
    epoch: int
    members: list[int]  # example indices of the global batch
    budgets: list[Budget]  # per member
    full: bool  # the whole batch stays untruncated (mixing: batch)


def plan_batches(
    n_examples: int, *, batch_size: int, epochs: int, seed: int, cut: Cut | None, max_steps: int | None = None
) -> Iterator[BatchPlan]:
    """Which examples every step takes (a seeded shuffle per epoch) and how each is cut."""
    last = total_steps(n_examples, batch_size, epochs, max_steps)
    index = 0
    for epoch in range(epochs):
        order = list(range(n_examples))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        for lo in range(0, len(order), batch_size):
            if index >= last:
                return
            members = order[lo : lo + batch_size]
            if cut is None:
                yield BatchPlan(index, epoch, members, [None] * len(members), False)
            else:
                full = cut.full_batch(index, last)
                budget = (cut.fraction_at(index, last), cut.tokens)
                whole = cut.full_examples(index * batch_size, len(members))
                budgets = [None if full or w else budget for w in whole]
                yield BatchPlan(index, epoch, members, budgets, full)
            index += 1


def plan_steps(
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    grad_accum: int,
    epochs: int,
    seed: int,
    weight_table: Mapping[int, float],
    pad_id: int,
    cut: Cut | None = None,
    rank: int = 0,
    world: int = 1,
    max_steps: int | None = None,
) -> Iterator[Step]:
    """Yield the run's steps in order (lazily; the same on every process)."""
    mode = cut.mode if cut is not None else "head"
    for plan in plan_batches(
        len(examples), batch_size=batch_size, epochs=epochs, seed=seed, cut=cut, max_steps=max_steps
    ):
        batch = [examples[i] for i in plan.members]
        kept = [keep_sequence(ex, b, mode, weight_table) for ex, b in zip(batch, plan.budgets)]
        step = Step(
            index=plan.index,
            epoch=plan.epoch,
            full=plan.full,
            denom=sum(sum(w > 0 for w in k.weights) for k in kept),
            examples=len(batch),
            empty=sum(not any(w > 0 for w in k.weights) for k in kept),
            whole=sum(b is None for b in plan.budgets) if cut is not None else 0,
        )
        step.micro = _micro_batches(kept, plan, cut, grad_accum, rank, world, pad_id, batch)
        yield step


def _micro_batches(kept, plan: BatchPlan, cut: Cut | None, grad_accum, rank, world, pad_id, batch) -> list:
    """This process's micro-batches: its share of the cut sequences in grad_accum parts, and of
    the whole ones (in a truncated run) in parts no longer than a truncated part. The number of
    parts is a function of the global batch, so every process runs as many."""
    supervised = lambda ks: [k for k in ks if any(w > 0 for w in k.weights)]  # noqa: E731
    longest = max(len(ex.ids) for ex in batch)
    if cut is None:
        return [collate(part, pad_id) for part in _share(supervised(_share(kept, world)[rank]), grad_accum)]
    # whole sequences are split by the largest kept fraction (the end of a growing one): the
    # run's truncated peak, which their micro-batches then do not exceed
    splits = full_batch_splits(cut.fraction, cut.tokens, longest)
    if plan.full:
        mine = supervised(_share(kept, world)[rank])
        return [collate(part, pad_id) for part in _share(mine, grad_accum * splits)]
    cut_part = [k for k, b in zip(kept, plan.budgets) if b is not None]
    whole = [k for k, b in zip(kept, plan.budgets) if b is None]
    micro = [collate(p, pad_id) for p in _share(supervised(_share(cut_part, world)[rank]), grad_accum)]
    if whole:  # mixing: example; parts of at most 1/splits of a truncated part's examples
        per_part = max(1, math.ceil(len(plan.members) / world / grad_accum) // splits)
        parts = math.ceil(math.ceil(len(whole) / world) / per_part)
        micro += [collate(p, pad_id) for p in _share(supervised(_share(whole, world)[rank]), parts)]
    return micro


def keep_sequence(ex: TokenizedExample, budget: Budget, mode: str, table: Mapping[int, float]) -> Kept:
    """The kept part of one example (cut before batching) with its per-position weights."""
    if budget is None:
        ids, segs = list(ex.ids), list(ex.segments)
    else:
        ids, segs = truncate(ex.ids, ex.segments, fraction=budget[0], tokens=budget[1], mode=mode)
    spliced = ids != list(ex.ids[: len(ids)])
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
    examples: Sequence[TokenizedExample],
    cut: Cut | None,
    *,
    batch_size: int,
    epochs: int,
    seed: int,
    max_steps: int | None = None,
) -> dict[str, list[int]]:
    """Every sequence whose teacher targets the run needs, by key: the full sequences (a prefix
    reads its full sequence's entry) and, when the mode splices, each spliced sequence the plan
    will train on (the same plan as `plan_steps`, so a growing fraction adds no guesswork)."""
    out = {sequence_key(ex.ids): list(ex.ids) for ex in examples}
    if cut is None or not cut.splices:
        return out
    for plan in plan_batches(
        len(examples), batch_size=batch_size, epochs=epochs, seed=seed, cut=cut, max_steps=max_steps
    ):
        for i, budget in zip(plan.members, plan.budgets):
            if budget is not None:
                ex = examples[i]
                ids, _ = truncate(ex.ids, ex.segments, fraction=budget[0], tokens=budget[1], mode=cut.mode)
                out.setdefault(sequence_key(ids), ids)
    return out
