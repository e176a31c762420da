"""QuantizeConfig: the `quantize` stage's recipe keys (pydantic only; no torch at import time).

    - quantize: {scheme: int8_dynamic}
    - quantize: {scheme: ort_int4, block_size: 32}
    - quantize: {scheme: ort_int8_static, calibration: {samples: 64}}
    - quantize: {scheme: int8_dynamic, limit: 200}   # eval examples for the accuracy delta (null = all)

Schemes that start with `ort_` apply to an exported ONNX artifact and produce one; the others
apply to a Hugging Face folder and produce one. fp8 needs a CUDA GPU of compute capability
>= 8.9 (Ada / Hopper and later): on anything else the recipe fails at load time, before any work.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Scheme = Literal[
    "int8_weight_only",
    "int8_dynamic",
    "fp8",
    "bnb_int8",
    "bnb_nf4",
    "ort_int8_dynamic",
    "ort_int8_static",
    "ort_int4",
]

FP8_MIN_CAPABILITY = (8, 9)


class CalibrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: int = Field(64, description="prompts from the recipe's data fed through the model")

    @field_validator("samples")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class QuantizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheme: Scheme = "int8_dynamic"
    block_size: int = Field(32, description="ort_int4 only: weights per quantization block")
    calibration: CalibrationConfig = CalibrationConfig()
    limit: int | None = Field(200, description="eval examples for the accuracy delta vs the input; null = all")

    @field_validator("limit")
    @classmethod
    def _limit(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be >= 1 (or null for every eval example)")
        return v

    @field_validator("block_size")
    @classmethod
    def _block_size(cls, v: int) -> int:
        # onnxruntime's MatMulNBits quantizer takes a power of two >= 16
        if v < 16 or v & (v - 1):
            raise ValueError("must be a power of two >= 16 (e.g. 32, 64, 128)")
        return v

    @field_validator("scheme")
    @classmethod
    def _fp8_hardware(cls, v: str) -> str:
        # a field validator, so the recipe error names the path (`stages[3].quantize.scheme`)
        if v == "fp8":
            problem = fp8_unavailable_reason()
            if problem:
                raise ValueError(f"fp8 {problem}")
        return v


def fp8_unavailable_reason() -> str | None:
    """Why fp8 cannot run here (None when it can). Imports torch only when fp8 is asked for."""
    import torch

    if not torch.cuda.is_available():
        return (
            "needs a CUDA GPU of compute capability >= 8.9 (Ada/Hopper, e.g. L4, H100, H200); "
            "no CUDA device is available: use int8_dynamic or int8_weight_only on this machine"
        )
    cc = torch.cuda.get_device_capability()
    if tuple(cc) < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name()
        return (
            f"needs a CUDA GPU of compute capability >= 8.9; {name} has {cc[0]}.{cc[1]}: "
            "use int8_dynamic or int8_weight_only"
        )
    return None


def output_kind(cfg: QuantizeConfig, input_kind: str) -> str:
    """The artifact kind this stage produces from `input_kind`; ValueError if it cannot apply."""
    if cfg.scheme.startswith("ort_"):
        if input_kind != "onnx":
            raise ValueError(
                f"{cfg.scheme} applies to an exported ONNX artifact: put `export: {{format: onnx}}` before it"
            )
        return "onnx"
    if input_kind != "hf":
        raise ValueError(
            f"{cfg.scheme} applies to a Hugging Face model folder, not a {input_kind} artifact: "
            "put it before `export`, or use an ort_* scheme (ort_int8_dynamic, ort_int8_static, "
            "ort_int4) after an ONNX export"
        )
    return "hf-quantized"  # registry.HF_QUANTIZED: servable, but no longer exportable or trainable
