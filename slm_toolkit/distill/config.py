"""The `distill` stage's config: the exact YAML keys of the recipe, validated once at the edge.

    - distill:
        student: builtin:arith-student      # or a path, a hub id, or `previous`
        supervise: [cot, answer]            # any non-empty subset of prompt, cot, answer
        segment_weights: {cot: 1.0, answer: 2.0}
        truncate: {fraction: 0.5, mode: head, full_batches: 0.15}   # or {tokens: 256}
        loss: {kind: forward_kl, temperature: 1.0, ce_weight: 0.0}
        teacher: {mode: offline, top_k: 32}
        on_policy: {fraction: 0.0, max_new_tokens: 64, temperature: 0.9}
        train: {epochs: 1, batch_size: 32, grad_accum: 1, lr: 3e-4, schedule: cosine,
                warmup: 0.05, weight_decay: 0.0, clip: 1.0, checkpoint_every: 200}

Pydantic only (no torch): `slm validate` imports this module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Segment = Literal["prompt", "cot", "answer"]
LossKind = Literal["forward_kl", "reverse_kl", "jsd", "tvd", "skl", "srkl"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TruncateConfig(_Strict):
    """Cut each sequence to its first `fraction` of tokens (or its first `tokens` tokens).

    Neither set = no truncation. `mode: keep_answer` cuts the chain of thought but keeps the
    answer. `full_batches` is the share of whole batches left untruncated (run as micro-batches
    so that peak memory stays at the truncated level).
    """

    fraction: float | None = None
    tokens: int | None = None
    mode: Literal["head", "keep_answer"] = "head"
    full_batches: float = 0.0

    @field_validator("fraction")
    @classmethod
    def _fraction(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v < 1.0:
            raise ValueError("must be in (0, 1) (omit `truncate` for full sequences)")
        return v

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("full_batches")
    @classmethod
    def _full_batches(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError("must be in [0, 1)")
        return v

    @model_validator(mode="after")
    def _exclusive(self) -> TruncateConfig:
        if self.fraction is not None and self.tokens is not None:
            raise ValueError("`fraction` and `tokens` are exclusive: set one of them")
        return self

    @property
    def active(self) -> bool:
        return self.fraction is not None or self.tokens is not None


class LossConfig(_Strict):
    """KD loss between teacher p and student q at `temperature` (scaled by T^2), mixed with CE:
    loss = (1 - ce_weight) * KD + ce_weight * CE(labels)."""

    kind: LossKind = "forward_kl"
    temperature: float = 1.0
    ce_weight: float = 0.0
    beta: float | None = None  # jsd: mixture weight (default 0.5)
    alpha: float | None = None  # skl / srkl: skew (default 0.1)

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("ce_weight")
    @classmethod
    def _ce_weight(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("must be in [0, 1]")
        return v

    @field_validator("beta", "alpha")
    @classmethod
    def _open_unit(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v < 1.0:
            raise ValueError("must be in (0, 1)")
        return v

    @model_validator(mode="after")
    def _params_match_kind(self) -> LossConfig:
        if self.beta is not None and self.kind != "jsd":
            raise ValueError("`beta` is only used by kind: jsd")
        if self.alpha is not None and self.kind not in ("skl", "srkl"):
            raise ValueError("`alpha` is only used by kind: skl or srkl")
        return self

    @property
    def param(self) -> float:
        """The kind's extra parameter (jsd beta, skl/srkl alpha), with defaults."""
        if self.kind == "jsd":
            return 0.5 if self.beta is None else self.beta
        if self.kind in ("skl", "srkl"):
            return 0.1 if self.alpha is None else self.alpha
        return 0.0


class TeacherConfig(_Strict):
    """offline: the teacher's top-k log-probs and the log of its remaining (tail) mass, cached
    once per sequence; the loss compares teacher and student over these k + 1 buckets (not
    renormalized over the top k: mass the student puts outside the teacher's top k costs).
    online: the full distribution from the teacher at every step. `model` overrides the
    recipe's model."""

    mode: Literal["offline", "online"] = "offline"
    top_k: int = 32
    model: str | None = None

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class OnPolicyConfig(_Strict):
    """GKD-style: this share of batches is sampled by the student and scored by the teacher."""

    fraction: float = 0.0
    max_new_tokens: int = 64
    temperature: float = 0.9

    @field_validator("fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("must be in [0, 1]")
        return v

    @field_validator("max_new_tokens")
    @classmethod
    def _max_new(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float) -> float:
        if v < 0:
            raise ValueError("must be >= 0 (0 = greedy)")
        return v


class TrainConfig(_Strict):
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; stops early when reached
    batch_size: int = 32  # examples per optimizer step (the global batch, over all processes)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup: float = 0.05  # share of the steps
    weight_decay: float = 0.0
    clip: float | None = 1.0  # max grad norm; null = no clipping
    checkpoint_every: int = 200  # optimizer steps
    fsdp: bool = False  # shard the student with FSDP under torchrun (default: DDP)

    @field_validator("epochs", "batch_size", "grad_accum", "checkpoint_every", "max_steps")
    @classmethod
    def _positive_int(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("warmup")
    @classmethod
    def _warmup(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError("must be in [0, 1)")
        return v

    @field_validator("weight_decay")
    @classmethod
    def _wd(cls, v: float) -> float:
        if v < 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("clip")
    @classmethod
    def _clip(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("must be > 0 (or null for no clipping)")
        return v

    @model_validator(mode="after")
    def _accum_divides(self) -> TrainConfig:
        if self.batch_size % self.grad_accum:
            raise ValueError("`batch_size` must be a multiple of `grad_accum`")
        return self


class DistillConfig(_Strict):
    student: str = "builtin:arith-student"
    supervise: list[Segment] = Field(default_factory=lambda: ["cot", "answer"])
    segment_weights: dict[Segment, float] | None = None
    truncate: TruncateConfig = Field(default_factory=TruncateConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    on_policy: OnPolicyConfig = Field(default_factory=OnPolicyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    limit: int | None = None  # use only the first `limit` training examples

    @field_validator("supervise")
    @classmethod
    def _supervise(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must name at least one of prompt, cot, answer")
        if len(set(v)) != len(v):
            raise ValueError("lists a segment twice")
        return v

    @field_validator("limit")
    @classmethod
    def _limit(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be >= 1")
        return v

    @model_validator(mode="after")
    def _weights(self) -> DistillConfig:
        for name, w in (self.segment_weights or {}).items():
            if name not in self.supervise:
                raise ValueError(f"segment_weights.{name}: `{name}` is not in `supervise`")
            if w <= 0:
                raise ValueError(f"segment_weights.{name}: must be > 0")
        return self

    def weight_of(self, segment: str) -> float:
        """The loss weight of a segment: 0 if unsupervised, else its weight (default 1)."""
        if segment not in self.supervise:
            return 0.0
        return float((self.segment_weights or {}).get(segment, 1.0))
