"""QuantizeConfig: the `quantize` stage's recipe keys (pydantic only; no torch at import time).

    - quantize: {scheme: int8_dynamic}
    - quantize: {scheme: ort_int4, block_size: 32}
    - quantize: {scheme: ort_int8_static, calibration: {samples: 64}}
    - quantize: {scheme: int8_dynamic, limit: 200}   # eval examples for the accuracy delta (null = all)

The schemes, the artifact kind each takes and produces and the hardware each needs are the rows
of quantize/schemes.py: `ort_*` schemes apply to an exported ONNX artifact and produce one; the
others apply to a Hugging Face folder and produce a quantized one. A scheme whose hardware is
missing (fp8 needs a CUDA GPU of compute capability >= 8.9) fails the recipe at load time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slm_toolkit.core.artifacts import Kind
from slm_toolkit.core.types import PositiveInt
from slm_toolkit.quantize.fp8 import fp8_unavailable_reason  # noqa: F401 - re-exported for callers
from slm_toolkit.quantize.schemes import SCHEMES, schemes_taking

SchemeName = Literal[tuple(SCHEMES)]  # type: ignore[valid-type]  # the table's names, in its order


class CalibrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: PositiveInt = Field(64, description="prompts from the recipe's data fed through the model")


class QuantizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheme: SchemeName = "int8_dynamic"
    block_size: int = Field(32, description="ort_int4 and ort_int8_weight: weights per quantization block")
    calibration: CalibrationConfig = CalibrationConfig()
    limit: PositiveInt | None = Field(200, description="eval examples for the accuracy delta vs the input; null = all")

    @field_validator("block_size")
    @classmethod
    def _block_size(cls, v: int) -> int:
        # onnxruntime's MatMulNBits quantizer takes a power of two >= 16
        if v < 16 or v & (v - 1):
            raise ValueError("must be a power of two >= 16 (e.g. 32, 64, 128)")
        return v

    @field_validator("scheme")
    @classmethod
    def _hardware(cls, v: str) -> str:
        # a field validator, so the recipe error names the path (`stages[3].quantize.scheme`)
        row = SCHEMES[v]
        problem = row.unavailable() if row.unavailable else None
        if problem:
            raise ValueError(f"{v} {problem}")
        return v


def output_kind(cfg: QuantizeConfig, input_kind: Kind) -> Kind:
    """The artifact kind this stage produces from `input_kind` (the scheme's row); ValueError with
    the fix when the scheme does not apply to it."""
    row = SCHEMES[cfg.scheme]
    if input_kind == row.accepts:
        return row.produces
    if row.accepts == Kind.ONNX:
        raise ValueError(f"{cfg.scheme} applies to an exported ONNX artifact: put `export: {{format: onnx}}` before it")
    raise ValueError(
        f"{cfg.scheme} applies to a Hugging Face model folder, not a {input_kind} artifact: put it before "
        f"`export`, or use an ort_* scheme ({', '.join(schemes_taking(Kind.ONNX))}) after an ONNX export"
    )
