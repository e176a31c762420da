"""The Generator protocol: one interface over PyTorch, ONNX Runtime and TensorRT.

evaluate, bench and serve use only this interface.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    presence_penalty: float = 0.0  # OpenAI's penalties over the generated tokens (decoding.Sampler)
    frequency_penalty: float = 0.0


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


def stop_id_set(eos_token_id: int | Sequence[int] | None) -> tuple[int, ...]:
    """The ids that end a sequence: a config's eos_token_id may be one id, a list, or None."""
    if eos_token_id is None:
        return ()
    if isinstance(eos_token_id, int):
        return (eos_token_id,)
    return tuple(int(i) for i in eos_token_id)


def _field(source: Any, key: str) -> Any:
    if source is None:
        return None
    return source.get(key) if isinstance(source, Mapping) else getattr(source, key, None)


def set_special_tokens(
    gen: Any,
    config: Any,
    generation_config: Any = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
) -> None:
    """Set a backend's `eos_token_ids`, `eos_token_id` and `pad_token_id`: the one EOS/pad set-up.

    `config` / `generation_config` are the model's config.json and generation_config.json, as dicts
    or transformers config objects. EOS: `eos_token_id` if given, else the generation config's, else
    the model config's (every id of a list ends a sequence). Pad: `pad_token_id` if given, else the
    model config's, else the generation config's, else the first EOS, else 0.
    """
    if eos_token_id is None:
        eos_token_id = _field(generation_config, "eos_token_id")
    if eos_token_id is None:
        eos_token_id = _field(config, "eos_token_id")
    gen.eos_token_ids = stop_id_set(eos_token_id)
    gen.eos_token_id = gen.eos_token_ids[0] if gen.eos_token_ids else None
    for candidate in (pad_token_id, _field(config, "pad_token_id"), _field(generation_config, "pad_token_id")):
        if candidate is not None:
            gen.pad_token_id = int(candidate)
            return
    gen.pad_token_id = gen.eos_token_id if gen.eos_token_id is not None else 0
