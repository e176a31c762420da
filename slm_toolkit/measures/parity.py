"""Parity of two Generators: do they compute the same logits and the same greedy tokens?

Used by the export stage's gate (PyTorch vs the exported model) and the prune stage's ONNX gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def parity(reference: Any, other: Any, prompts: Sequence[Sequence[int]], new_tokens: int) -> dict[str, float]:
    """Compare logits at prefill and each decode step (both fed the reference's greedy tokens)."""
    lr, sr = reference.prefill(prompts)
    le, se = other.prefill(prompts)
    worst = float(np.abs(lr - le).max())
    agree = np.ones(len(prompts), dtype=bool)
    for step in range(new_tokens):
        tokens = lr.argmax(-1)
        agree &= tokens == le.argmax(-1)
        if step == new_tokens - 1:
            break
        lr, sr = reference.decode_step(tokens.tolist(), sr)
        le, se = other.decode_step(tokens.tolist(), se)
        worst = max(worst, float(np.abs(lr - le).max()))
    scale = float(np.abs(lr).max()) or 1.0
    return {
        "parity_max_abs_logit_diff": worst,
        "parity_rel_logit_diff": worst / scale,
        "parity_token_agreement": float(agree.mean()),
        "parity_prompts": float(len(prompts)),
        "parity_new_tokens": float(new_tokens),
    }
