"""torchao quantization of a Hugging Face folder: int8 weight-only, int8 W8A8 dynamic, fp8.

Quantizing goes through transformers' `TorchAoConfig` (the field's path). Saving and reloading
cannot, in the pinned versions, and this module fills that gap with torchao's own functions:

- transformers 4.57.6 writes torchao weights to safetensors only for the Float8 configs and
  otherwise wants `safe_serialization=False` (a pickle, which this toolkit never writes);
- its safetensors *loader* expects the `weight:qdata` key layout of torchao 0.14 and an
  `unflatten_tensor_state_dict` that returns a dict, while torchao 0.18 writes `_weight_qdata`
  keys and returns a tuple; a folder saved either way does not reload through `from_pretrained`.

So we save with `torchao.prototype.safetensors.flatten_tensor_state_dict` (plain tensors plus a
JSON description of each torchao tensor in the safetensors metadata: no pickle); the folder is
reopened by models/quantized.load_torchao_model (format "torchao" in slm_meta.json), which
rebuilds the model from config.json and restores the torchao tensors with
`unflatten_tensor_state_dict`. config.json keeps transformers' `quantization_config`, so a plain
`from_pretrained` fails loudly on such a folder instead of loading random weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slm_toolkit.models.quantized import TORCHAO_WEIGHTS as WEIGHTS


def ao_config(scheme: str) -> Any:
    """The torchao config object for one of our scheme names (a scheme's torchao settings live here)."""
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        PerRow,
    )

    configs = {
        "int8_weight_only": Int8WeightOnlyConfig,  # per-row int8 weights, activations stay float
        "int8_dynamic": Int8DynamicActivationInt8WeightConfig,  # W8A8: per-token int8 activations at run time
        # E4M3 weights and activations, one scale per row / per token (Hopper/Ada fp8 GEMMs)
        "fp8": lambda: Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
    }
    if scheme not in configs:
        raise ValueError(f"{scheme!r} is not a torchao scheme; choose one of {', '.join(configs)}")
    return configs[scheme]()


def compute_dtype(scheme: str, device: str) -> Any:
    """fp8 GEMMs take bf16 activations; int8 on CPU runs in fp32 (torchao's CPU kernels)."""
    import torch

    return torch.bfloat16 if scheme == "fp8" or device.startswith("cuda") else torch.float32


def quantize_torchao(src: Path, dst: Path, scheme: str, device: str = "cpu") -> Any:
    """Load `src`, quantize its linear layers with torchao, save to `dst`; return the model."""
    from transformers import AutoModelForCausalLM, TorchAoConfig

    model = AutoModelForCausalLM.from_pretrained(
        str(src),
        quantization_config=TorchAoConfig(ao_config(scheme)),
        dtype=compute_dtype(scheme, device),
        device_map=device,
        use_safetensors=True,
    )
    save_torchao(model, dst)
    return model


def save_torchao(model: Any, dst: Path) -> None:
    """Write config.json, generation_config.json and torchao-flattened model.safetensors."""
    from safetensors.torch import save_file
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    dst.mkdir(parents=True, exist_ok=True)
    tensors, metadata = flatten_tensor_state_dict(_untied_state_dict(model))
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(dst / WEIGHTS), metadata={**metadata, "format": "pt"})
    model.config.save_pretrained(str(dst))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(dst))


def _untied_state_dict(model: Any) -> dict[str, Any]:
    """The state dict without the second name of a tied weight (safetensors refuses shared storage)."""
    import torch

    seen: set[tuple[int, tuple[int, ...]]] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        if type(tensor) is torch.Tensor:  # torchao tensors are never tied (embeddings stay float)
            key = (tensor.data_ptr(), tuple(tensor.shape))
            if key in seen:
                continue
            seen.add(key)
        out[name] = tensor
    return out
