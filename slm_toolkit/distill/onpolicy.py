"""On-policy distillation (GKD, Agarwal et al. 2024): the student writes the continuation of
each prompt itself (sampled with transformers' `generate`, which decodes with a KV cache), and
the teacher scores every generated token; the loss is the same KD loss as on fixed data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from slm_toolkit.data.example import ANSWER, COT, TokenizedExample
from slm_toolkit.distill.batching import Kept, sequence_key
from slm_toolkit.distill.masks import label_weights


def prompt_part(ex: TokenizedExample) -> tuple[list[int], list[int]]:
    """The generation prompt of a tokenized example: everything before its first CoT token."""
    start = next((i for i, s in enumerate(ex.segments) if s in (COT, ANSWER)), len(ex.ids))
    return list(ex.ids[:start]), list(ex.segments[:start])


@torch.no_grad()
def sample(
    model,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    pad_id: int,
    eos_ids: Sequence[int],
    seed: int,
) -> list[list[int]]:
    """The student's continuation of each prompt (up to and including its first EOS)."""
    width = max(len(p) for p in prompts)
    device = next(model.parameters()).device
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):  # left padding: generation continues every row at the end
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_k=0 if temperature > 0 else None,
            top_p=None,
            pad_token_id=pad_id,
            eos_token_id=list(eos_ids),
            use_cache=True,
        )
    model.train(was_training)
    new = out[:, width:].tolist()
    result = []
    for row in new:
        cut = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
        result.append(row[:cut])
    return result


def generated_sequences(
    examples: Sequence[TokenizedExample],
    continuations: Sequence[list[int]],
    *,
    think_close_id: int | None,
    table: Mapping[int, float],
) -> list[Kept]:
    """Prompt + sampled continuation, with segment ids: CoT up to and including `</think>`,
    answer after it (template tokens are then attributed as everywhere else)."""
    out = []
    for ex, cont in zip(examples, continuations):
        ids, segs = prompt_part(ex)
        seg = COT
        for tok in cont:
            segs.append(seg)
            if think_close_id is not None and tok == think_close_id:
                seg = ANSWER
        ids = ids + list(cont)
        out.append(Kept(ids=ids, segments=segs, weights=label_weights(segs, table), cache_key=sequence_key(ids)))
    return out
