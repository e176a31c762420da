"""Calibration batches and per-weight importance for the three criteria.

- magnitude:  w²                       (a structure's score is the L2 norm of its weights)
- taylor:     Σ_batches |w · ∂L/∂w|    (first-order Taylor, Molchanov et al. 2019), L = next-token
              cross-entropy over the non-template tokens of the recipe's examples
- activation: |w_ij| · ‖x_j‖₂          (Wanda, Sun et al. 2023): ‖x_j‖ is the norm of input channel j of
              the linear layer over the calibration tokens (non-template, non-padding)

Calibration sequences come from `data.segments.tokenize_examples`, so the loss and the activation
norms cover only prompt / CoT / answer tokens and the template tokens (bos, <think>, </think>,
eos), which are the same in every example, do not dominate the statistics.

Why the scores are computed here and not by torch-pruning's `Importance` classes: those score a
dependency `Group`, and torch-pruning 1.6.1 cannot build the group of a GQA attention block
(`DependencyGraph.get_pruning_group` on q/k/v/o never returns: the repeat_kv expand + SDPA path
loops in `_fix_dependency_graph_non_recursive`), so KV-head groups need our own scores anyway; and its
`ActivationImportance` is the input-activation norm alone, not Wanda's weight × activation. One
element-wise score map per criterion, summed over each structure in `width.py`, keeps the three
criteria identical across KV groups, MLP channels and hidden channels. torch-pruning still does
the coupled removal (width.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from slm_toolkit.data.example import TEMPLATE, Example
from slm_toolkit.data.segments import tokenize_examples
from slm_toolkit.data.tensors import pad_right

CRITERIA = ("magnitude", "taylor", "activation")


@dataclass
class CalibBatch:
    input_ids: torch.Tensor  # [B, T], right-padded
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T]: the id where the token is prompt/CoT/answer, else -100
    token_mask: torch.Tensor  # [B, T] bool: real, non-template tokens (for activation statistics)


def calibration_batches(
    tokenizer: Any, examples: Sequence[Example], samples: int, batch_size: int, device: str = "cpu"
) -> list[CalibBatch]:
    """The first `samples` examples, tokenized with their segment ids, in padded batches."""
    chosen = list(examples)[:samples]
    if not chosen:
        raise ValueError("prune needs calibration examples: the recipe's data has no training examples")
    seqs = tokenize_examples(tokenizer, chosen)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for start in range(0, len(seqs), batch_size):
        ids, segs = pad_right(seqs[start : start + batch_size], pad)
        keep = (segs >= 0) & (segs != TEMPLATE)
        labels = torch.where(keep, ids, torch.full_like(ids, -100))
        out.append(CalibBatch(ids.to(device), (segs >= 0).long().to(device), labels.to(device), keep.to(device)))
    return out


def weight_scores(model: nn.Module, criterion: str, batches: Sequence[CalibBatch]) -> dict[str, torch.Tensor]:
    """Element-wise importance of every 2-D weight of `model` (name -> tensor of its shape).

    Norm weights (1-D) are left out: the structures are scored on their linear / embedding weights.
    """
    weights = {n: p for n, p in model.named_parameters() if p.dim() == 2}
    if criterion == "magnitude":
        return {n: p.detach().float().pow(2) for n, p in weights.items()}
    if criterion == "taylor":
        return taylor_scores(model, batches, weights)
    if criterion == "activation":
        norms = input_norms(model, batches)
        scores = {}
        for name, p in weights.items():
            module = name.rsplit(".", 1)[0]
            w = p.detach().float().abs()
            scores[name] = w * norms[module][None, :] if module in norms else w
        return scores
    raise ValueError(f"importance must be one of {', '.join(CRITERIA)}, not {criterion!r}")


def taylor_scores(
    model: nn.Module, batches: Sequence[CalibBatch], weights: dict[str, nn.Parameter]
) -> dict[str, torch.Tensor]:
    """Σ over calibration batches of |w · ∂L/∂w| (per batch, so opposite-sign gradients don't cancel)."""
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in weights.items()}
    was_training = model.training
    model.eval()
    for batch in tqdm(batches, desc="prune: taylor importance", unit="batch", leave=False):
        model.zero_grad(set_to_none=True)
        out = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels, use_cache=False
        )
        out.loss.backward()
        for n, p in weights.items():
            if p.grad is not None:
                acc[n] += (p.detach().float() * p.grad.float()).abs()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return acc


@torch.no_grad()
def input_norms(model: nn.Module, batches: Sequence[CalibBatch]) -> dict[str, torch.Tensor]:
    """‖x_j‖₂ of every nn.Linear's input channel j over the calibration tokens (module name -> [in])."""
    sums: dict[str, torch.Tensor] = {}
    current: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(module, args, output):
            x = args[0].float()
            mask = current["mask"]
            if x.shape[:-1] != mask.shape:  # a linear applied to something other than the token stream
                return
            sq = (x * mask[..., None]).pow(2).sum(dim=tuple(range(x.dim() - 1)))
            sums[name] = sums.get(name, 0) + sq

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        for batch in tqdm(batches, desc="prune: activation norms", unit="batch", leave=False):
            current["mask"] = batch.token_mask.float()
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {n: s.sqrt() for n, s in sums.items()}
