"""The decode loop every backend shares: sampling and `generate` over prefill/decode_step/select.

Backends differ in how they run the model (PyTorch, an ONNX Runtime session, a TensorRT
engine); what they do with the logits is the same, so it is written once here. Logits are
float32 numpy arrays [B, V] on every backend. Written by hand because the libraries' loops
(transformers' `generate`, optimum's, onnxruntime-genai's) each run only their own model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from slm_toolkit.runtime.base import GenerationConfig


def _top_p_filter(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Zero every token outside the smallest set whose probability reaches top_p (nucleus)."""
    order = np.argsort(-probs, axis=-1)
    sorted_p = np.take_along_axis(probs, order, axis=-1)
    before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass of the tokens ranked above
    sorted_p = np.where(before < top_p, sorted_p, 0.0)
    out = np.zeros_like(probs)
    np.put_along_axis(out, order, sorted_p, axis=-1)
    return out / out.sum(axis=-1, keepdims=True)


def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """Next token per row: argmax when temperature is 0, else temperature + nucleus sampling."""
    logits = np.asarray(logits, dtype=np.float32)
    if temperature <= 0.0:
        return logits.argmax(axis=-1)
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p < 1.0:
        probs = _top_p_filter(probs, top_p)
    u = rng.random((probs.shape[0], 1))
    return np.minimum((np.cumsum(probs, axis=-1) < u).sum(axis=-1), probs.shape[-1] - 1)


def generate(gen: Any, input_ids: Sequence[Sequence[int]], config: GenerationConfig) -> list[list[int]]:
    """The shared generation loop: prefill, then one decode_step per token; finished rows are dropped.

    Returns the new tokens of each prompt without the EOS / stop token that ended it. Every id
    of `gen.eos_token_ids` is an EOS: masked before min_new_tokens, ignored with ignore_eos.
    """
    stops = set(config.stop_token_ids)
    eos = set() if config.ignore_eos else set(gen.eos_token_ids)
    rng = np.random.default_rng(config.seed)
    out: list[list[int]] = [[] for _ in input_ids]
    if config.max_new_tokens <= 0 or not input_ids:
        return out
    logits, state = gen.prefill(input_ids)
    alive = list(range(len(input_ids)))  # row i of the state is prompt alive[i]
    for step in range(config.max_new_tokens):
        logits = np.array(logits, dtype=np.float32, copy=True)
        if step < config.min_new_tokens and eos:
            logits[:, sorted(eos)] = -np.inf
        tokens = sample(logits, config.temperature, config.top_p, rng)
        keep = []
        for row, tok in enumerate(tokens.tolist()):
            if tok in eos or tok in stops:
                continue
            out[alive[row]].append(tok)
            keep.append(row)
        if not keep or step == config.max_new_tokens - 1:
            break
        if len(keep) < len(alive):
            state = gen.select(state, keep)
            alive = [alive[r] for r in keep]
            tokens = tokens[keep]
        logits, state = gen.decode_step(tokens.tolist(), state)
    return out


def candidate_logprobs(
    first_logits: np.ndarray, logits: np.ndarray, candidates: Sequence[Sequence[int]]
) -> list[float]:
    """Sum of log-probabilities of each candidate.

    `first_logits` [V]: the prompt's last-position logits (predicts every candidate's first token);
    `logits` [C, L, V]: the logits after feeding each candidate (right-padded to L tokens).
    """

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        m = x.max(axis=-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))

    first = log_softmax(first_logits)
    rest = log_softmax(logits) if logits.size else logits
    scores = []
    for c, cand in enumerate(candidates):
        if not cand:
            scores.append(0.0)
            continue
        total = first[cand[0]]
        for j in range(1, len(cand)):
            total += rest[c, j - 1, cand[j]]
        scores.append(float(total))
    return scores
