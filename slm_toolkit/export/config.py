"""ExportConfig: the `export` stage's recipe keys (pydantic only; no torch/onnx at import time).

    - export: {format: onnx, optimize: basic}
    - export: {format: tensorrt, precision: fp16, profiles: {batch: [1, 8, 64], seq: [1, 256, 2048]}}

ONNX goes through optimum-onnx (one merged decoder with KV cache); TensorRT builds an engine
from that ONNX. TensorRT needs its Python package and a CUDA GPU; where either is missing the
recipe fails at load time with a message that names what is missing, before any work.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slm_toolkit.core.artifacts import Kind
from slm_toolkit.core.types import Fraction01, PositiveFloat, PositiveInt


class Range(BaseModel):
    """A TensorRT optimization profile dimension: [min, opt, max]."""

    model_config = ConfigDict(extra="forbid")
    min: int
    opt: int
    max: int

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, v):
        if isinstance(v, (list, tuple)):
            if len(v) != 3:
                raise ValueError("must be [min, opt, max]")
            return {"min": v[0], "opt": v[1], "max": v[2]}
        return v

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"must satisfy 1 <= min <= opt <= max, got [{self.min}, {self.opt}, {self.max}]")
        return self


class Profiles(BaseModel):
    """Batch size and sequence length ranges the TensorRT engine accepts (one profile each for
    prefill and decode are derived from these: export/tensorrt.py `engine_profiles`)."""

    model_config = ConfigDict(extra="forbid")
    batch: Range = Range(min=1, opt=1, max=8)
    seq: Range = Range(min=1, opt=128, max=1024)


class ParityConfig(BaseModel):
    """The gate an export must pass: ONNX logits vs PyTorch and greedy tokens on eval prompts."""

    model_config = ConfigDict(extra="forbid")
    atol: PositiveFloat = Field(1e-3, description="max |logit difference| allowed (fp32 exports agree to ~1e-5)")
    prompts: PositiveInt = Field(8, description="eval prompts checked")
    new_tokens: PositiveInt = Field(16, description="greedy tokens compared per prompt")
    min_token_agreement: Fraction01 = Field(1.0, description="fraction of prompts whose greedy tokens must agree")


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["onnx", "tensorrt"] = "onnx"  # = the Kind it produces
    optimize: Literal["none", "basic", "all"] = Field(
        "basic",
        description="ONNX Runtime graph optimization saved into model.onnx (basic is portable; "
        "all adds hardware-specific fusions and is applied when the session starts)",
    )
    opset: int = 18
    precision: Literal["fp32", "fp16", "int8", "fp8"] | None = Field(
        None, description="tensorrt only: engine precision (default fp16)"
    )
    profiles: Profiles = Profiles()
    parity: ParityConfig = ParityConfig()

    @field_validator("opset")
    @classmethod
    def _opset(cls, v: int) -> int:
        if not 14 <= v <= 21:
            raise ValueError("must be between 14 and 21 (optimum-onnx exports decoders at opset >= 14)")
        return v

    @model_validator(mode="after")
    def _tensorrt(self) -> ExportConfig:
        if self.format != "tensorrt":
            if self.precision is not None:
                raise ValueError("precision applies to format: tensorrt only (quantize ONNX with the quantize stage)")
            return self
        if self.precision is None:
            self.precision = "fp16"
        problem = tensorrt_unavailable_reason(self.precision)
        if problem:
            raise ValueError(problem)
        return self


def tensorrt_unavailable_reason(precision: str = "fp16") -> str | None:
    """Why a TensorRT engine cannot be built here (None when it can)."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return (
            "format: tensorrt needs NVIDIA TensorRT, which is not installed: pip install tensorrt "
            "from NVIDIA's package index on a machine with a CUDA GPU (or use format: onnx)"
        )
    import torch

    if not torch.cuda.is_available():
        return "format: tensorrt needs a CUDA GPU; none is available here (use format: onnx)"
    if precision == "fp8" and tuple(torch.cuda.get_device_capability()) < (8, 9):
        cc = torch.cuda.get_device_capability()
        return (
            f"precision: fp8 needs a CUDA GPU of compute capability >= 8.9; "
            f"{torch.cuda.get_device_name()} has {cc[0]}.{cc[1]} (use fp16 or int8)"
        )
    return None


def output_kind(cfg: ExportConfig, input_kind: Kind) -> Kind:
    """The artifact kind this stage produces (the format's kind); ValueError if the input cannot be exported."""
    if input_kind != Kind.HF:
        where = "torchao/bitsandbytes" if input_kind == Kind.HF_QUANTIZED else "ort_*"
        raise ValueError(
            f"export takes a Hugging Face model folder with float weights, not a {input_kind} artifact: "
            f"put export before any {where} quantize scheme"
        )
    return Kind(cfg.format)
