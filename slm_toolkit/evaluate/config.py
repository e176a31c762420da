"""The `evaluate` stage's config: the exact YAML keys of the recipe, validated once at the edge.

    - evaluate:
        limit: null              # use only the first N eval examples (perplexity)
        generate_limit: null     # generate (exact match, agreement) on the first N of those; null = all
        max_new_tokens: null     # null = from the eval data (longest CoT + answer, plus a margin)
        batch_size: 32           # prompts per generation / scoring batch
        latency_repeats: 5       # timed batch-1 generations (after one warm-up)
        latency_new_tokens: null # tokens per timed generation; null = max_new_tokens
        reference: null          # null = the recipe's `model`; or a path to a reference artifact
        backend: auto            # auto | torch | onnxruntime | tensorrt (runtime/backends.py)
        model: null              # evaluate this model instead of the stage's input (a path or
                                 # builtin:arith-student); the input passes through unchanged

Generation is the expensive part on a CPU (one decode step per token): `generate_limit` and
`max_new_tokens` bound it, while perplexity (one forward pass per example on PyTorch, a batched
decode step per token elsewhere) can use more examples. Pydantic only (no torch): `slm validate`
imports this module.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator

from slm_toolkit.core.types import PositiveInt
from slm_toolkit.runtime.backends import BackendChoice


class EvaluateConfig(BaseModel):
    """Exact match, answer rate, per-segment perplexity, agreement, size, latency and retention."""

    model_config = ConfigDict(extra="forbid")

    limit: PositiveInt | None = None
    generate_limit: PositiveInt | None = None
    max_new_tokens: PositiveInt | None = None
    batch_size: PositiveInt = 32
    latency_repeats: PositiveInt = 5
    latency_new_tokens: PositiveInt | None = None
    reference: str | None = None
    backend: BackendChoice = "auto"
    model: str | None = None

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be a path, a builtin:... name, or null (the stage's input)")
        return v

    @field_validator("reference")
    @classmethod
    def _reference(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be a path, `model`, or null")
        return v
