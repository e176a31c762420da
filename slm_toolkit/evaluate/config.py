"""The `evaluate` stage's config: the exact YAML keys of the recipe, validated once at the edge.

    - evaluate:
        max_new_tokens: null     # null = from the eval data (longest CoT + answer, plus a margin)
        batch_size: 32           # prompts per generation batch
        latency_repeats: 5       # timed batch-1 generations (after one warm-up)
        limit: null              # use only the first N eval examples
        reference: null          # null = the recipe's `model`; or a path to a reference artifact
        backend: auto            # auto | torch | onnxruntime | tensorrt (runtime/backends.py)
        model: null              # evaluate this model instead of the stage's input (a path or
                                 # builtin:arith-student); the input passes through unchanged

Pydantic only (no torch): `slm validate` imports this module.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator

from slm_toolkit.runtime.backends import BackendChoice


class EvaluateConfig(BaseModel):
    """Accuracy, answer rate, per-segment perplexity, size, latency and retention of an artifact."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = None
    batch_size: int = 32
    latency_repeats: int = 5
    limit: int | None = None
    reference: str | None = None
    backend: BackendChoice = "auto"
    model: str | None = None

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be a path, a builtin:... name, or null (the stage's input)")
        return v

    @field_validator("max_new_tokens", "limit")
    @classmethod
    def _positive_or_none(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be >= 1 (or null for automatic)")
        return v

    @field_validator("batch_size", "latency_repeats")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("reference")
    @classmethod
    def _reference(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be a path, `model`, or null")
        return v
