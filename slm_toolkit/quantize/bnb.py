"""bitsandbytes quantization of a Hugging Face folder: LLM.int8 (8-bit) and NF4 (4-bit).

transformers' `BitsAndBytesConfig` path end to end: the saved folder (safetensors) reloads with
`AutoModelForCausalLM.from_pretrained` (models/quantized.load_bnb_model, format "bitsandbytes").
Two CPU traps, both met in bitsandbytes 0.50:
- save before the first forward pass: bitsandbytes rewrites 4-bit/8-bit weights in place when it
  runs them on CPU, and a later `save_pretrained` writes different weights;
- NF4 on CPUs with AVX512-BF16 (bitsandbytes repacks the weights for its kernel at inference)
  needs every quantized linear layer's out_features % 32 == 0 and in_features % 64 == 0;
  we check the shapes from the config first and name the layers that do not fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slm_toolkit.models.quantized import require_bitsandbytes

NF4_CPU_OUT_MULTIPLE = 32
NF4_CPU_IN_MULTIPLE = 64


def bnb_config(scheme: str) -> Any:
    """transformers' BitsAndBytesConfig for one of our scheme names (a scheme's bnb settings live here)."""
    import torch
    from transformers import BitsAndBytesConfig

    configs = {
        "bnb_int8": lambda: BitsAndBytesConfig(load_in_8bit=True),
        "bnb_nf4": lambda: BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.float32,
            bnb_4bit_use_double_quant=False,
        ),
    }
    if scheme not in configs:
        raise ValueError(f"{scheme!r} is not a bitsandbytes scheme; choose one of {', '.join(configs)}")
    return configs[scheme]()


def linear_shapes(src: Path) -> dict[str, tuple[int, int]]:
    """{module name: (in_features, out_features)} of the linear layers bitsandbytes would quantize."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(src))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    skip = {name for name, mod in model.named_modules() if mod is model.get_output_embeddings()}
    return {
        name: (mod.in_features, mod.out_features)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and name not in skip
    }


def check_nf4_cpu_dims(shapes: dict[str, tuple[int, int]]) -> None:
    """Raise a ValueError naming the layers whose shapes the CPU NF4 kernels cannot take."""
    bad = [
        f"{name} ({i}->{o})" for name, (i, o) in shapes.items() if o % NF4_CPU_OUT_MULTIPLE or i % NF4_CPU_IN_MULTIPLE
    ]
    if bad:
        raise ValueError(
            f"bnb_nf4 on CPU needs out_features % {NF4_CPU_OUT_MULTIPLE} == 0 and in_features % "
            f"{NF4_CPU_IN_MULTIPLE} == 0 in every linear layer; these do not fit: {', '.join(bad[:6])}"
            + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
            + ". Use bnb_int8, int8_weight_only or int8_dynamic, or prune with round_to a multiple of 64"
        )


def quantize_bnb(src: Path, dst: Path, scheme: str, device: str = "cpu") -> None:
    """Load `src` quantized with bitsandbytes and save it to `dst` (before any forward pass)."""
    from transformers import AutoModelForCausalLM

    require_bitsandbytes()
    if scheme == "bnb_nf4" and device == "cpu" and _cpu_packs_nf4():
        check_nf4_cpu_dims(linear_shapes(src))
    model = AutoModelForCausalLM.from_pretrained(
        str(src), quantization_config=bnb_config(scheme), device_map=device, use_safetensors=True
    )
    model.save_pretrained(str(dst), safe_serialization=True)  # first, before any forward pass


def _cpu_packs_nf4() -> bool:
    """bitsandbytes repacks NF4 weights for its AVX512-BF16 kernel at inference (the shape limits)."""
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())
