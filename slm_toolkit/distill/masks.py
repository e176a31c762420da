"""Supervision masks from the per-token segment ids of the foundation (one array per example).

Position t of a sequence predicts token t + 1, so a position is supervised when the *label*
token's segment is supervised. Template tokens (`<think>`, `</think>`, `<eos>`, chat-template
text) have no segment of their own: each belongs to the segment it closes, i.e. the nearest
earlier non-template token (`</think>` to the CoT, `<eos>` to the answer, `<think>` to the
prompt); leading template tokens (`<bos>`) belong to nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from slm_toolkit.data.example import SEGMENT_IDS, TEMPLATE


def attribute_template(segments: Sequence[int]) -> list[int]:
    """Segment ids with every TEMPLATE token replaced by the segment of the token before it."""
    out, current = [], TEMPLATE
    for seg in segments:
        if seg != TEMPLATE:
            current = seg
        out.append(current)
    return out


def segment_weight_table(weights: Mapping[str, float]) -> dict[int, float]:
    """{"cot": 1.0, "answer": 2.0} -> {COT: 1.0, ANSWER: 2.0} (unnamed segments weigh 0)."""
    return {SEGMENT_IDS[name]: float(w) for name, w in weights.items() if w > 0}


def label_weights(segments: Sequence[int], table: Mapping[int, float]) -> list[float]:
    """Weight of each position 0..n-2 (predicting token t + 1); 0 = not supervised."""
    owner = attribute_template(segments)
    return [float(table.get(seg, 0.0)) for seg in owner[1:]]
