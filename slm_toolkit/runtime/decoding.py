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


class Sampler:
    """Picks the next token of ONE sequence from its logits row: the project's one sampler.

    `generate` below (evaluate, bench, every backend's `generate`) and the serving engine (both
    schedulers) call it, so a request with a seed gives the same text on every path. Each
    sequence has its own generator (numpy PCG64 seeded with `seed`, fresh entropy without one)
    and draws exactly one uniform number per sampled token, so a row's text never depends on the
    other rows of its batch. In order: OpenAI's presence / frequency penalties over the tokens
    this sampler picked (minus `presence` once, minus `frequency` per occurrence), the `banned`
    ids (EOS before min_new_tokens), then argmax when temperature is 0, else softmax(logits /
    temperature) in float64 restricted to the nucleus (the most probable tokens, in descending
    order, until their mass reaches top_p) and inverse-CDF sampling.
    """

    def __init__(
        self,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | Sequence[int] | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
    ):
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.presence, self.frequency = float(presence_penalty), float(frequency_penalty)
        self.rng = np.random.default_rng(seed) if self.temperature > 0.0 else None
        self._counts: dict[int, int] = {}

    @classmethod
    def from_config(cls, config: GenerationConfig) -> Sampler:
        return cls(
            config.temperature,
            config.top_p,
            config.seed,
            config.presence_penalty,
            config.frequency_penalty,
        )

    @property
    def plain_greedy(self) -> bool:
        """Argmax of the raw logits (one argmax over the batch serves every such row)."""
        return self.temperature <= 0.0 and not (self.presence or self.frequency)

    def pick(self, row: np.ndarray, banned: Sequence[int] = ()) -> int:
        """The next token from one logits row [V]; it counts toward later penalties."""
        token = self._pick(row, banned)
        if self.presence or self.frequency:
            self._counts[token] = self._counts.get(token, 0) + 1
        return token

    def _pick(self, row: np.ndarray, banned: Sequence[int]) -> int:
        if self.plain_greedy and not len(banned):
            return int(np.argmax(row))
        z = np.array(row, dtype=np.float64)
        if self._counts and (self.presence or self.frequency):
            ids = np.fromiter(self._counts, dtype=np.int64, count=len(self._counts))
            counts = np.fromiter(self._counts.values(), dtype=np.float64, count=len(self._counts))
            z[ids] -= self.frequency * counts + self.presence
        if len(banned):
            z[list(banned)] = -np.inf
        if self.temperature <= 0.0:
            return int(np.argmax(z))
        z = (z - z.max()) / self.temperature
        probs = np.exp(z)
        probs /= probs.sum()
        ids, probs = nucleus(probs, self.top_p)
        cdf = np.cumsum(probs)
        k = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        return int(ids[min(k, len(ids) - 1)])


def nucleus(probs: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, probabilities) of the nucleus, in descending probability (ties: lower id
    first): the shortest such prefix whose mass reaches top_p. Only the head is sorted."""
    n = probs.shape[-1]
    if top_p >= 1.0:
        return np.arange(n), probs
    k = min(64, n)
    while True:
        head = np.argpartition(-probs, k - 1)[:k] if k < n else np.arange(n)
        head = head[np.lexsort((head, -probs[head]))]
        p = probs[head]
        inside = (np.cumsum(p) - p) < top_p  # the mass ranked above a token is still short of top_p
        if k == n or not inside[-1]:  # the nucleus ends inside the sorted head
            keep = int(inside.sum())
            return head[:keep], p[:keep]
        k = min(n, k * 8)


def next_tokens(
    logits: np.ndarray, samplers: Sequence[Sampler], banned: Sequence[Sequence[int]] | None = None
) -> list[int]:
    """One token per row of `logits` [B, V], each row by its own sampler."""
    logits = np.asarray(logits)
    greedy = None
    out = []
    for i, s in enumerate(samplers):
        ban = banned[i] if banned is not None else ()
        if s.plain_greedy and not len(ban):
            if greedy is None:
                greedy = logits.argmax(axis=-1).tolist()
            out.append(int(greedy[i]))
        else:
            out.append(s.pick(logits[i], ban))
    return out


def token_logprobs(row: np.ndarray, token: int, top: int = 0) -> tuple[float, list[tuple[int, float]]]:
    """log p(token) under the model's own distribution (raw logits: before temperature and
    penalties, as vLLM reports them) and the `top` most likely (id, log p), most likely first."""
    z = np.asarray(row, dtype=np.float64)
    m = z.max()
    lse = m + np.log(np.exp(z - m).sum())
    best: list[tuple[int, float]] = []
    if top > 0:
        k = min(top, z.shape[-1])
        head = np.argpartition(-z, k - 1)[:k] if k < z.shape[-1] else np.arange(k)
        head = head[np.lexsort((head, -z[head]))]
        best = [(int(i), float(z[i] - lse)) for i in head]
    return float(z[token] - lse), best


def prompt_logprobs(gen: Any, ids: Sequence[int], top: int = 0) -> list[tuple[float, list[tuple[int, float]]] | None]:
    """Per-token log-probabilities of a prompt (None for its first token, which nothing predicts):
    the first token prefilled, then the others fed one decode_step at a time (teacher forcing),
    so it works on every backend through the Generator protocol alone."""
    out: list[tuple[float, list[tuple[int, float]]] | None] = [None]
    if len(ids) < 2:
        return out
    logits, state = gen.prefill([list(ids[:1])])
    for k in range(1, len(ids)):
        out.append(token_logprobs(np.asarray(logits)[0], int(ids[k]), top))
        if k < len(ids) - 1:
            logits, state = gen.decode_step([int(ids[k])], state)
    return out


def generate(gen: Any, input_ids: Sequence[Sequence[int]], config: GenerationConfig) -> list[list[int]]:
    """The shared generation loop: prefill, then one decode_step per token; finished rows are dropped.

    Returns the new tokens of each prompt without the EOS / stop token that ended it. Every id
    of `gen.eos_token_ids` is an EOS: masked before min_new_tokens, an ordinary token with
    ignore_eos. Every row has its own `Sampler` seeded with `config.seed`: a prompt's text does
    not depend on the other prompts of the batch.
    """
    stops = set(config.stop_token_ids)
    eos = set() if config.ignore_eos else set(gen.eos_token_ids)
    banned = sorted(eos)
    samplers = [Sampler.from_config(config) for _ in input_ids]
    out: list[list[int]] = [[] for _ in input_ids]
    if config.max_new_tokens <= 0 or not input_ids:
        return out
    logits, state = gen.prefill(input_ids)
    alive = list(range(len(input_ids)))  # row i of the state is prompt alive[i]
    for step in range(config.max_new_tokens):
        ban = [banned if step < config.min_new_tokens else ()] * len(alive)
        tokens = next_tokens(logits, [samplers[a] for a in alive], ban)
        keep = []
        for row, tok in enumerate(tokens):
            if tok in eos or tok in stops:
                continue
            out[alive[row]].append(tok)
            keep.append(row)
        if not keep or step == config.max_new_tokens - 1:
            break
        if len(keep) < len(alive):
            state = gen.select(state, keep)
            alive = [alive[r] for r in keep]
            tokens = [tokens[r] for r in keep]
        logits, state = gen.decode_step(tokens, state)
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
