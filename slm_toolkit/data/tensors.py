"""Tokenized examples as right-padded tensors (torch imported here, not in data/segments.py)."""

from __future__ import annotations

from collections.abc import Sequence

from slm_toolkit.data.example import TokenizedExample


def pad_right(batch: Sequence[TokenizedExample], pad_id: int):
    """(ids [B, T], segments [B, T]) right-padded to the longest; padding has segment id -1."""
    import torch

    width = max(len(s.ids) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    segs = torch.full((len(batch), width), -1, dtype=torch.long)
    for row, s in enumerate(batch):
        ids[row, : len(s.ids)] = torch.tensor(s.ids)
        segs[row, : len(s.ids)] = torch.tensor(s.segments)
    return ids, segs
