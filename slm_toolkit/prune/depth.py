"""Depth pruning: rank decoder blocks by how little they change their input, drop the least important.

A block's importance is the mean angular distance arccos(cos(x_in, x_out)) / π between the hidden
state entering and leaving it, over the calibration tokens (non-template, non-padding): ShortGPT's
Block Influence (Men et al. 2024) in the angular form of Gromov et al. 2024, also the depth signal
of Minitron. A block that barely rotates the residual stream is the cheapest to remove.
No library does this for HF decoders (torch-pruning prunes width), hence the hooks here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from slm_toolkit.prune.importance import CalibBatch


def check_layers(config, layers: int) -> None:
    n = config.num_hidden_layers
    if layers >= n:
        raise ValueError(f"prune.layers: {layers} would remove all {n} decoder layers of this model (at most {n - 1})")


@torch.no_grad()
def block_distances(model: nn.Module, batches: Sequence[CalibBatch]) -> list[float]:
    """Mean angular distance (in [0, 1]) between each decoder block's input and output."""
    blocks = model.model.layers
    sums = [0.0] * len(blocks)
    count = 0
    state: dict[str, torch.Tensor] = {}

    def hook(i):
        def fn(module, args, kwargs, output):
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1).clamp(-1, 1)
            sums[i] += float((torch.arccos(cos) / math.pi)[state["mask"]].sum())

        return fn

    handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        for batch in tqdm(batches, desc="prune: block distances", unit="batch", leave=False):
            state["mask"] = batch.token_mask
            count += int(batch.token_mask.sum())
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [s / max(count, 1) for s in sums]


def least_important(distances: Sequence[float], n: int) -> list[int]:
    """Indices of the n blocks with the smallest distance, sorted."""
    return sorted(sorted(range(len(distances)), key=lambda i: distances[i])[:n])


def drop_layers(model: nn.Module, drop: Sequence[int]) -> list[int]:
    """Remove decoder blocks `drop` in place; renumber the rest (KV-cache slots) and fix the config."""
    blocks = model.model.layers
    kept = [i for i in range(len(blocks)) if i not in set(drop)]
    model.model.layers = nn.ModuleList(blocks[i] for i in kept)
    for new_idx, block in enumerate(model.model.layers):
        block.self_attn.layer_idx = new_idx
    config = model.config
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None):  # per-layer attention kinds (sliding / full) follow their layer
        config.layer_types = [config.layer_types[i] for i in kept]
    return kept
