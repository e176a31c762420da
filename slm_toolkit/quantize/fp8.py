"""fp8 (E4M3 weights and activations, per-row / per-token scales) through torchao, on CUDA GPUs of
compute capability >= 8.9 (Ada, Hopper and later), where the fp8 tensor-core GEMMs exist.

The recipe refuses fp8 on other hardware when it loads (QuantizeConfig's validator); this module
checks again at run time, since a recipe can be validated on one machine and run on another.
Saving and reloading go through torchao_backend (safetensors, no pickle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slm_toolkit.quantize.config import fp8_unavailable_reason
from slm_toolkit.quantize.torchao_backend import ao_config, quantize_torchao


def fp8_config() -> Any:
    """torchao's config for our `fp8` scheme (Float8DynamicActivationFloat8WeightConfig, per row)."""
    return ao_config("fp8")


def quantize_fp8(src: Path, dst: Path, device: str) -> Any:
    """Quantize `src` to fp8 on `device` (a CUDA device) and save it to `dst`; return the model."""
    problem = fp8_unavailable_reason()
    if problem:
        raise RuntimeError(f"fp8 {problem}")
    if not device.startswith("cuda"):
        raise RuntimeError(f"fp8 runs on a CUDA device, but the run's device is {device!r}: run with device cuda")
    return quantize_torchao(src, dst, "fp8", device=device)
