"""The Generator protocol: one interface over PyTorch, ONNX Runtime and TensorRT.

evaluate, bench and serve use only this interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    min_new_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()


class Generator(Protocol):
    """A loaded model that can prefill, decode with a KV cache, generate and score.

    Logits are float32 numpy arrays on every backend. A state passed to decode_step, merge or
    select is consumed: use the returned one afterwards (backends may update caches in place).
    Prompts of a batch may differ in length (left padding happens inside the backend).
    """

    backend: str
    eos_token_id: int | None  # the first of eos_token_ids (None when the model has none)
    eos_token_ids: tuple[int, ...]  # every id that ends a sequence (a config may list several)
    pad_token_id: int
    max_length: int

    def prefill(self, input_ids: Sequence[Sequence[int]]) -> tuple[Any, Any]:
        """Run the prompts (a batch, ragged allowed); return (last-position logits [B, V], state)."""

    def decode_step(self, next_ids: Sequence[int], state: Any) -> tuple[Any, Any]:
        """Feed one token per sequence; return (logits [B, V], new state). The KV cache lives in state."""

    def generate(self, input_ids: Sequence[Sequence[int]], config: GenerationConfig) -> list[list[int]]:
        """Generate for a batch of prompts; return the new tokens only (EOS excluded)."""

    def merge(self, states: Sequence[Any]) -> Any:
        """Join decode states of several batches into one batch (continuous batching admits requests)."""

    def select(self, state: Any, keep: Sequence[int]) -> Any:
        """Keep only the sequences at these batch indices (finished or cancelled ones are dropped)."""

    def score(self, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]) -> list[float]:
        """Sum of log-probabilities of each candidate continuation given the prompt (prompt run once)."""
