"""The prune stage's config (pydantic only, no torch: `slm validate` imports it).

    - prune:
        heads: 0.25          # fraction of KV-head groups to remove (a KV head goes with its query heads)
        mlp: 0.5             # fraction of MLP intermediate channels
        hidden: 0.0          # embedding / hidden width
        layers: 0            # whole decoder layers to drop (depth pruning)
        importance: taylor   # magnitude | taylor | activation
        calibration: {samples: 128, batch_size: 16}
        round_to: 8          # keep pruned dimensions multiples of this
        measure:             # before/after figures of the stage (healing comes later)
          limit: 64          # eval examples scored for perplexity, input vs pruned (null = all)
          generate: 64       # of those, examples generated for exact match (0 = none)
          max_new_tokens: null   # generation budget; null = from the data
          latency_rounds: 5      # interleaved batch-1 decode timings, input vs pruned
          latency_new_tokens: 32

What needs the model (a ratio that would remove every KV head, more layers than the model has)
is checked when the stage starts, with a message naming the field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slm_toolkit.core.types import FractionBelow1, NonNegativeInt, PositiveInt


class CalibrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: PositiveInt = Field(128, description="training examples used to score importance / rank layers")
    batch_size: PositiveInt = 16


class MeasureConfig(BaseModel):
    """What the stage measures before/after: on a 135M model every generated token is a forward
    pass of both models on the CPU, so generation is bounded separately from perplexity."""

    model_config = ConfigDict(extra="forbid")

    limit: PositiveInt | None = 64
    generate: NonNegativeInt = 64
    max_new_tokens: PositiveInt | None = None
    latency_rounds: PositiveInt = 5
    latency_new_tokens: PositiveInt = 32


class PruneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    heads: FractionBelow1 = 0.0  # fraction of KV-head groups removed in every layer
    mlp: FractionBelow1 = 0.0  # fraction of MLP intermediate channels removed in every layer
    hidden: FractionBelow1 = 0.0  # fraction of the hidden (embedding) width removed
    layers: NonNegativeInt = 0  # number of whole decoder layers dropped
    importance: Literal["magnitude", "taylor", "activation"] = "taylor"
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    round_to: PositiveInt = 8
    measure: MeasureConfig = Field(default_factory=MeasureConfig)

    @model_validator(mode="after")
    def _something_to_prune(self) -> PruneConfig:
        if not (self.heads or self.mlp or self.hidden or self.layers):
            raise ValueError("nothing to prune: set at least one of heads, mlp, hidden, layers")
        return self
