"""The quantization schemes: one row per scheme, the only list of them.

Everything that depends on the scheme reads its row: the recipe's validation (`scheme:` must
name a row; the row's hardware check runs when the recipe loads), the artifact kind the stage
accepts and produces (so `export` after a torchao scheme is a recipe error), the stage's quantize
step (the row's function), slm_meta.json (the row's on-disk format, which models/quantized.py
reopens the folder by) and the README's scheme list (a test checks that it names every row).

Adding a scheme: its function (a backend's `(src, dst, job)`; for a new setting of an existing
library, a branch of `ao_config` / `bnb_config` / `quantize_onnx`), one row below, and a test.
This module is light (no torch): `slm validate` imports it through QuantizeConfig.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slm_toolkit.core.artifacts import Kind
from slm_toolkit.quantize import bnb, fp8, ort, torchao_backend


@dataclass(frozen=True)
class QuantizeJob:
    """What a scheme's function gets besides the input and output folders."""

    scheme: str
    device: str = "cpu"
    block_size: int = 32  # ort_int4: weights per quantization block
    calibration: Sequence[Sequence[int]] = ()  # tokenized prompts, for calibrated schemes


@dataclass(frozen=True)
class Scheme:
    name: str
    backend: str  # the library that quantizes: torchao, bitsandbytes, onnxruntime
    accepts: Kind  # the input artifact kind
    produces: Kind  # the output artifact kind
    quantize: Callable[[Path, Path, QuantizeJob], Any]  # writes the quantized model files into dst
    # how the result is reopened: a models/quantized.QUANT_FORMATS key written to slm_meta.json,
    # or None when the produced kind alone says it (ONNX folders open with onnxruntime)
    reopen_format: str | None
    summary: str  # one line for docs and messages
    hardware: str = "any"  # what it needs to run, in words
    unavailable: Callable[[], str | None] | None = None  # why it cannot run here (None: it can)
    calibrated: bool = False  # needs calibration prompts from the recipe's data


def _torchao(src: Path, dst: Path, job: QuantizeJob) -> None:
    torchao_backend.quantize_torchao(src, dst, job.scheme, device=job.device)


def _fp8(src: Path, dst: Path, job: QuantizeJob) -> None:
    fp8.quantize_fp8(src, dst, job.device)


def _bnb(src: Path, dst: Path, job: QuantizeJob) -> None:
    bnb.quantize_bnb(src, dst, job.scheme, device=job.device)


def _ort(src: Path, dst: Path, job: QuantizeJob) -> None:
    ort.quantize_onnx(src, dst, job.scheme, block_size=job.block_size, calibration_prompts=job.calibration)


_HF, _HFQ, _ONNX = Kind.HF, Kind.HF_QUANTIZED, Kind.ONNX

SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in [
        Scheme(
            "int8_weight_only", "torchao", _HF, _HFQ, _torchao, "torchao", "int8 weights per row, float activations"
        ),
        Scheme(
            "int8_dynamic", "torchao", _HF, _HFQ, _torchao, "torchao", "W8A8: int8 weights, per-token int8 activations"
        ),
        Scheme(
            "fp8",
            "torchao",
            _HF,
            _HFQ,
            _fp8,
            "torchao",
            "E4M3 weights and activations, per-row / per-token scales",
            hardware=f"a CUDA GPU of compute capability >= {fp8.FP8_MIN_CAPABILITY[0]}.{fp8.FP8_MIN_CAPABILITY[1]}",
            unavailable=fp8.fp8_unavailable_reason,
        ),
        Scheme("bnb_int8", "bitsandbytes", _HF, _HFQ, _bnb, "bitsandbytes", "LLM.int8 8-bit weights"),
        Scheme("bnb_nf4", "bitsandbytes", _HF, _HFQ, _bnb, "bitsandbytes", "NF4 4-bit weights"),
        Scheme("ort_int8_dynamic", "onnxruntime", _ONNX, _ONNX, _ort, None, "int8 weights, activations per call"),
        Scheme(
            "ort_int8_static",
            "onnxruntime",
            _ONNX,
            _ONNX,
            _ort,
            None,
            "int8 QDQ, activation ranges calibrated on the recipe's prompts",
            calibrated=True,
        ),
        Scheme("ort_int4", "onnxruntime", _ONNX, _ONNX, _ort, None, "4-bit MatMulNBits weights, blocked"),
    ]
}


def scheme(name: str) -> Scheme:
    """The row of `name`; ValueError naming the known schemes otherwise."""
    if name not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {name!r}: choose one of {', '.join(SCHEMES)}")
    return SCHEMES[name]


def schemes_taking(kind: Kind) -> list[str]:
    """The names of the schemes that apply to an artifact of `kind`."""
    return [s.name for s in SCHEMES.values() if s.accepts == kind]
