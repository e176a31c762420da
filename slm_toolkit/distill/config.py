"""The `distill` stage's config: the exact YAML keys of the recipe, validated once at the edge.

    - distill:
        student: builtin:arith-student      # or a path, a hub id, or `previous`
        supervise: [cot, answer]            # any non-empty subset of prompt, cot, answer
        segment_weights: {cot: 1.0, answer: 2.0}
        truncate: {fraction: 0.45, mode: head, full_batches: 0.15, schedule: uniform, mixing: batch}
                                            # or {tokens: 256}; fraction_start: 0.25 ramps the cut
        loss: {kind: forward_kl, temperature: 1.0, ce_weight: 0.0}
        teacher: {mode: offline, top_k: 32}
        on_policy: {fraction: 0.0, max_new_tokens: 64, temperature: 0.9}
        train: {epochs: 1, batch_size: 32, grad_accum: 1, lr: 3e-4, schedule: cosine,
                warmup: 0.05, weight_decay: 0.0, clip: 1.0, checkpoint_every: 200}

Pydantic only (no torch): `slm validate` imports this module. Value rules are the shared
constrained types of core/types.py (one spelling, one message each).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from slm_toolkit.core.types import (
    Fraction01,
    FractionBelow1,
    NonNegativeFloat,
    OpenFraction,
    PositiveFloat,
    PositiveInt,
)

Segment = Literal["prompt", "cot", "answer"]
LossKind = Literal["forward_kl", "reverse_kl", "jsd", "tvd", "skl", "srkl"]


def _kept(v: float) -> float:
    if not 0.0 < v < 1.0:
        raise ValueError("must be in (0, 1) (omit `truncate` for full sequences)")
    return v


# OpenFraction with the hint a user needs when they write `fraction: 1.0` for "no truncation"
KeptFraction = Annotated[float, AfterValidator(_kept)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TruncateConfig(_Strict):
    """Train on the first part of each sequence; `active` says whether anything is truncated.

    - `fraction` (0 < f < 1) keeps the first f of each sequence's tokens, `tokens` the first N
      tokens (exclusive; neither = no truncation, the other keys then do not apply).
    - `mode`: where the cut falls.
        `head` (the paper): the kept part is a prefix of the sequence.
        `keep_answer`: the budget ends with the sequence's end (`</think>` answer `<eos>`),
            always, and the cut falls inside the CoT (cutting into the prompt if it must).
        `cot_only`: only the CoT is cut: the prompt is always kept whole, and the answer part
            keeps its tokens (and their loss) when prompt + answer fit in the budget, the rest
            of the budget going to the head of the CoT; when they do not fit, the sequence is
            cut after the budget (or the prompt) like `head`.
    - `full_batches` (0 <= s < 1): the share of the training left untruncated, run as
      micro-batches no longer than a truncated one, so that peak memory stays at the truncated
      level. `mixing` says what is left whole: `batch` = whole batches (a share s of the steps),
      `example` = a share s of the examples of every batch.
    - `schedule` places the untruncated batches over training: `uniform` (evenly spread),
      `front` (the first s of the steps), `end` (the last s of the steps: a full-length
      annealing phase). `front` and `end` need `mixing: batch`.
    - `fraction_start`: the kept fraction grows linearly over the steps, from `fraction_start`
      at the first step to `fraction` at the last (needs `fraction`, and must be below it).
    """

    fraction: KeptFraction | None = None
    tokens: PositiveInt | None = None
    mode: Literal["head", "keep_answer", "cot_only"] = "head"
    full_batches: FractionBelow1 = 0.0
    schedule: Literal["uniform", "front", "end"] = "uniform"
    mixing: Literal["batch", "example"] = "batch"
    fraction_start: OpenFraction | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TruncateConfig:
        if self.fraction is not None and self.tokens is not None:
            raise ValueError("`fraction` and `tokens` are exclusive: set one of them")
        defaults = {"mode": "head", "full_batches": 0.0, "schedule": "uniform", "mixing": "batch"}
        if not self.active:
            for key in ("mode", "full_batches", "schedule", "mixing", "fraction_start"):
                if key in self.model_fields_set and getattr(self, key) != defaults.get(key):
                    raise ValueError(f"{key}: only applies to a truncated run: set `fraction` or `tokens`")
        if self.schedule != "uniform" and self.full_batches == 0:
            raise ValueError("schedule: places the untruncated batches: set `full_batches` > 0")
        if self.mixing == "example" and self.full_batches == 0:
            raise ValueError("mixing: `example` leaves a share of the examples whole: set `full_batches` > 0")
        if self.mixing == "example" and self.schedule != "uniform":
            raise ValueError("mixing: `example` spreads whole examples over every batch: `schedule` must be uniform")
        if self.fraction_start is not None:
            if self.fraction is None:
                raise ValueError("fraction_start: needs `fraction` (the kept fraction at the last step)")
            if self.fraction_start >= self.fraction:
                raise ValueError("fraction_start: must be < `fraction` (the kept fraction grows over training)")
        return self

    @property
    def active(self) -> bool:
        """Whether anything is truncated: the one answer to that question in the stage."""
        return self.fraction is not None or self.tokens is not None


class LossConfig(_Strict):
    """KD loss between teacher p and student q at `temperature` (scaled by T^2), mixed with CE:
    loss = (1 - ce_weight) * KD + ce_weight * CE(labels)."""

    kind: LossKind = "forward_kl"
    temperature: PositiveFloat = 1.0
    ce_weight: Fraction01 = 0.0
    beta: OpenFraction | None = None  # jsd: mixture weight (default 0.5)
    alpha: OpenFraction | None = None  # skl / srkl: skew (default 0.1)

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
    top_k: PositiveInt = 32
    model: str | None = None


class OnPolicyConfig(_Strict):
    """GKD-style: this share of batches is sampled by the student and scored by the teacher."""

    fraction: Fraction01 = 0.0
    max_new_tokens: PositiveInt = 64
    temperature: NonNegativeFloat = 0.9  # 0 = greedy


class TrainConfig(_Strict):
    """The optimizer and its schedule (AdamW). `schedule` here is the learning rate's; where the
    untruncated batches go is `truncate.schedule`."""

    epochs: PositiveInt = 1
    max_steps: PositiveInt | None = None  # optimizer steps; stops early when reached
    batch_size: PositiveInt = 32  # examples per optimizer step (the global batch, over all processes)
    grad_accum: PositiveInt = 1  # micro-batches per optimizer step
    lr: PositiveFloat = 3e-4
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup: FractionBelow1 = 0.05  # share of the steps
    weight_decay: NonNegativeFloat = 0.0
    clip: PositiveFloat | None = 1.0  # max grad norm; null = no clipping
    checkpoint_every: PositiveInt = 200  # optimizer steps
    fsdp: bool = False  # shard the student with FSDP under torchrun (default: DDP)

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
    limit: PositiveInt | None = None  # use only the first `limit` training examples

    @field_validator("supervise")
    @classmethod
    def _supervise(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must name at least one of prompt, cot, answer")
        if len(set(v)) != len(v):
            raise ValueError("lists a segment twice")
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
