"""fp8 (E4M3 weights and activations, per-row / per-token scales) through torchao, on CUDA GPUs of
compute capability >= 8.9 (Ada, Hopper and later), where the fp8 tensor-core GEMMs exist.

The recipe refuses fp8 on other hardware when it loads (the scheme row's hardware check, run by
QuantizeConfig's validator); this module checks again at run time, since a recipe can be
validated on one machine and run on another. Saving and reloading go through torchao_backend
(safetensors, no pickle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slm_toolkit.quantize.torchao_backend import ao_config, quantize_torchao

FP8_MIN_CAPABILITY = (8, 9)


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
