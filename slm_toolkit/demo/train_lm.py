"""A small next-token training loop for the builtin demo models.

Written by hand rather than with transformers' Trainer: the builtin models train for a few
thousand tiny steps on pre-tokenized data, where a 40-line loop starts instantly, is easy to
read, and keeps the recipe (steps, batch, lr, seed) fully explicit for the cache hash.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from slm_toolkit.data.example import TokenizedExample

IGNORE = -100


def pack(sequences: Sequence[TokenizedExample], pad_id: int, skip_segments: Iterable[int] = ()):
    """Pad every sequence to the longest one; return (input_ids, attention_mask, labels, lengths).

    Labels are the ids themselves (the model shifts them) with padding and tokens of
    `skip_segments` (e.g. {PROMPT}: read but not predicted) set to -100.
    """
    import torch

    skip = set(skip_segments)
    width = max(len(s.ids) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE, dtype=torch.long)
    lengths = torch.zeros(len(sequences), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq.ids)
        ids[row, :n] = torch.tensor(seq.ids)
        keep = torch.tensor([seg not in skip for seg in seq.segments])
        labels[row, :n] = torch.where(keep, ids[row, :n], IGNORE)
        lengths[row] = n
    mask = torch.arange(width)[None, :] < lengths[:, None]
    return ids, mask.long(), labels, lengths


def train_causal_lm(
    model,
    sequences: Sequence[TokenizedExample],
    *,
    pad_id: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    warmup: float = 0.05,
    weight_decay: float = 0.01,
    clip: float = 1.0,
    progress: bool = True,
    desc: str = "train",
    skip_segments: Iterable[int] = (),
) -> list[float]:
    """Train `model` in place for `steps` AdamW steps (cosine schedule) on random batches.

    Every token is predicted (a base language model: the prompt too, so that per-segment
    perplexity and prompt distillation mean something) unless its segment is in `skip_segments`.
    Returns the loss of every step. Deterministic for a given seed and thread count.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    ids, mask, labels, lengths = pack(sequences, pad_id, skip_segments)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, int(warmup * steps), steps)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for step in bar:
        rows = torch.randint(len(sequences), (batch_size,), generator=gen)
        width = int(lengths[rows].max())
        # right padding under a causal mask: real tokens never see the pads, so no attention mask
        # is needed (the faster fused causal path); the pads are excluded from the loss by labels
        out = model(input_ids=ids[rows, :width], labels=labels[rows, :width])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        if step % 20 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
    bar.close()
    model.eval()
    return losses
