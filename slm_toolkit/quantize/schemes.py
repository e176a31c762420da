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
    block_size: int = 32  # ort_int4 / ort_int8_weight: weights per quantization block
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


def _hf(name: str, backend: str, quantize: Callable, summary: str, **extra: Any) -> Scheme:
    """A scheme on a float Hugging Face folder; its result is reopened by its backend's format."""
    return Scheme(name, backend, Kind.HF, Kind.HF_QUANTIZED, quantize, backend, summary, **extra)


def _onnx(name: str, quantize: Callable, summary: str, **extra: Any) -> Scheme:
    """A scheme on an ONNX export; the result is an ONNX folder, reopened by its kind."""
    return Scheme(name, "onnxruntime", Kind.ONNX, Kind.ONNX, quantize, None, summary, **extra)


_FP8_CC = ".".join(map(str, fp8.FP8_MIN_CAPABILITY))

SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in [
        _hf("int8_weight_only", "torchao", _torchao, "int8 weights per row, float activations"),
        _hf("int8_dynamic", "torchao", _torchao, "W8A8: int8 weights, per-token int8 activations"),
        _hf(
            "fp8",
            "torchao",
            _fp8,
            "E4M3 weights and activations, per-row / per-token scales",
            hardware=f"a CUDA GPU of compute capability >= {_FP8_CC}",
            unavailable=fp8.fp8_unavailable_reason,
        ),
        _hf("bnb_int8", "bitsandbytes", _bnb, "LLM.int8 8-bit weights"),
        _hf("bnb_nf4", "bitsandbytes", _bnb, "NF4 4-bit weights"),
        _onnx("ort_int8_dynamic", _ort, "int8 weights, activations quantized per call"),
        _onnx(
            "ort_int8_static", _ort, "int8 QDQ, activation ranges calibrated on the recipe's prompts", calibrated=True
        ),
        _onnx("ort_int4", _ort, "4-bit MatMulNBits weights, blocked"),
        _onnx("ort_int8_weight", _ort, "8-bit MatMulNBits weights, blocked; float activations"),
    ]
}


def schemes_taking(kind: Kind) -> list[str]:
    """The names of the schemes that apply to an artifact of `kind`."""
    return [s.name for s in SCHEMES.values() if s.accepts == kind]
