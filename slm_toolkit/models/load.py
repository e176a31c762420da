"""Load a model folder (a Hugging Face folder, float or quantized) with transformers, safetensors only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slm_toolkit.core.errors import ModelNotAvailable
from slm_toolkit.models.quantized import load_quantized, quant_format

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_safetensors(folder: Path) -> None:
    """Raise unless `folder` holds safetensors weights: we never unpickle weights."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelNotAvailable(f"{folder} is not a model folder: it has no config.json")
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickled:
        raise ModelNotAvailable(
            f"{folder} has only pickle weights ({', '.join(pickled)}); this toolkit loads safetensors "
            "only. Convert them once where you trust the file, e.g. "
            "`AutoModelForCausalLM.from_pretrained(folder).save_pretrained(out, safe_serialization=True)`"
        )
    raise ModelNotAvailable(f"{folder} has no weights (*.safetensors)")


def _torch_dtype(dtype: Any) -> Any:
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)


def load_model(
    path: Path | str,
    device: str = "cpu",
    dtype: Any = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Return (model in eval mode on `device`, tokenizer) from a local Hugging Face folder.

    `dtype` is None (as saved), a torch dtype, or a name ("float32", "bf16", ...).
    Remote code runs only when `trust_remote_code=True` (the user opted in).
    """
    path = Path(path)
    return load_causal_lm(path, device, dtype, trust_remote_code), load_tokenizer(path, trust_remote_code)


def load_causal_lm(path: Path | str, device: str = "cpu", dtype: Any = None, trust_remote_code: bool = False) -> Any:
    """The model of a Hugging Face folder in eval mode on `device`, quantized folders included.

    A quantized folder says so in its slm_meta.json (kind hf-quantized, and its format): it is
    reopened by that format's function (models/quantized.py), so every caller (runtime, evaluate,
    bench, serve) gets it right. `dtype` applies to float folders only.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    check_safetensors(path)
    fmt = quant_format(path)
    if fmt is not None:
        return load_quantized(path, fmt, device)
    model = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=_torch_dtype(dtype),
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    if device != "cpu":
        model = model.to(device)
    return model.eval()
