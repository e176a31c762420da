"""The `bench` stage's config: the exact YAML keys of the recipe, validated once at the edge.

    - bench:
        backend: onnxruntime      # auto | torch | onnxruntime | tensorrt (the server's backend)
        concurrency: [1, 4, 16]   # closed-loop sweep: requests in flight at once
        num_requests: 64          # measured requests per concurrency level (warm-up excluded)
        input_len: 32             # random dataset: prompt tokens
        output_len: 64            # output tokens per request (forced with min_tokens + ignore_eos)
        dataset: random           # random | gsm8k | path/to/prompts.jsonl
        warmup: 2                 # warm-up requests per level, not counted
        scheduler: continuous     # continuous | naive (the server's scheduler)
        max_batch_size: null      # the server's --max-batch-size (null: its default)
        rate: null                # open loop: Poisson arrivals per second (null: closed loop)
        burstiness: 1.0           # Gamma shape of the inter-arrival times (1 = Poisson)
        slo: {ttft: 500, tpot: 50}  # ms; goodput counts requests meeting every one (optional)

Pydantic only (no torch, no httpx): `slm validate` imports this module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from slm_toolkit.core.types import NonNegativeInt, PositiveFloat, PositiveInt
from slm_toolkit.runtime.backends import BackendChoice

SLO_KEYS = ("ttft", "tpot", "itl", "e2el")


def check_dataset(v: str) -> str:
    """random | gsm8k | a path ending in .jsonl."""
    if v in ("random", "gsm8k") or v.endswith(".jsonl"):
        return v
    raise ValueError(f"must be random, gsm8k or a .jsonl file, got {v!r}")


def check_slo(slo: dict[str, float] | None) -> dict[str, float] | None:
    if slo is None:
        return None
    for key, ms in slo.items():
        if key not in SLO_KEYS:
            raise ValueError(f"unknown SLO {key!r}: use any of {', '.join(SLO_KEYS)} (milliseconds)")
        if not ms > 0:
            raise ValueError(f"{key} must be > 0 ms")
    return dict(slo)


class BenchConfig(BaseModel):
    """Serve the stage's input artifact on a loopback port and measure latency and throughput."""

    model_config = ConfigDict(extra="forbid")

    backend: BackendChoice = "auto"
    concurrency: list[int] = [1, 4, 16]
    num_requests: PositiveInt = 64
    input_len: PositiveInt = 32
    output_len: PositiveInt = 64
    dataset: str = "random"
    warmup: NonNegativeInt = 2
    scheduler: Literal["continuous", "naive"] = "continuous"
    max_batch_size: PositiveInt | None = None  # null: the server's default
    rate: PositiveFloat | None = None  # null: closed loop
    burstiness: PositiveFloat = 1.0
    slo: dict[str, float] | None = None

    @field_validator("concurrency")
    @classmethod
    def _concurrency(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("must list at least one concurrency level")
        if any(c < 1 for c in v):
            raise ValueError("every concurrency level must be >= 1")
        return v

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return check_dataset(v)

    @field_validator("slo")
    @classmethod
    def _slo(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        return check_slo(v)
