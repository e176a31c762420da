"""Reopen quantized Hugging Face folders: one function per on-disk format, chosen by slm_meta.json.

The quantize stage writes `{"kind": "hf-quantized", "quant_format": <format>, "scheme": ...}` into
the folder's slm_meta.json; `QUANT_FORMATS` maps that format to the function that reopens it.
Nothing here looks at the weight files to guess what they are: the folder says what it is.

- torchao: transformers 4.57 cannot reload torchao safetensors (it would pickle them on save, and
  its loader expects torchao 0.14's key layout), so the quantize stage saves with torchao's
  `flatten_tensor_state_dict` and this reopens with `unflatten_tensor_state_dict` (no pickle);
- bitsandbytes: transformers' own path, but the model is placed by `device_map` (bnb models refuse
  `.to(device)`).

torch, transformers, safetensors, torchao and bitsandbytes are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from slm_toolkit.core.artifacts import META_FILE, Kind, read_meta

TORCHAO_WEIGHTS = "model.safetensors"
FORMAT_KEY = "quant_format"  # the slm_meta.json key naming the on-disk format of quantized weights


def load_torchao_model(folder: Path | str, device: str = "cpu") -> Any:
    """Rebuild a model saved by quantize/torchao_backend.save_torchao (safetensors only), in eval mode."""
    import torch
    from safetensors import safe_open
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_utils import no_init_weights

    folder = Path(folder)
    config = AutoConfig.from_pretrained(str(folder))
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # build the plain architecture; the weights carry the quantization
    with safe_open(str(folder / TORCHAO_WEIGHTS), framework="pt", device=device) as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state, leftover = unflatten_tensor_state_dict(tensors, metadata)
    if leftover:
        raise ValueError(f"{folder / TORCHAO_WEIGHTS}: tensors not described by its metadata: {sorted(leftover)[:5]}")
    with no_init_weights(), torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(config, "dtype", None))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    _check_keys(model, missing, unexpected, folder)
    return model.eval()


def _check_keys(model: Any, missing: list[str], unexpected: list[str], folder: Path) -> None:
    tied = set(getattr(model, "_tied_weights_keys", None) or []) if model.config.tie_word_embeddings else set()
    really_missing = sorted(set(missing) - tied)
    if really_missing or unexpected:
        raise ValueError(
            f"{folder} does not match its config.json: missing {really_missing[:5]}, unexpected {unexpected[:5]}"
        )


def load_bnb_model(folder: Path | str, device: str = "cpu") -> Any:
    """Reload a saved bitsandbytes folder on `device` (bnb models are placed by device_map, never `.to`)."""
    from transformers import AutoModelForCausalLM

    require_bitsandbytes()
    model = AutoModelForCausalLM.from_pretrained(str(folder), device_map=device, use_safetensors=True)
    return model.eval()


def require_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:  # a pinned dependency, but a broken install should say what is missing
        raise RuntimeError(f"bitsandbytes is not importable ({e}): pip install bitsandbytes==0.50.2") from e


# format (as written in slm_meta.json) -> (folder, device) -> model in eval mode
QUANT_FORMATS: dict[str, Callable[[Path, str], Any]] = {
    "torchao": load_torchao_model,
    "bitsandbytes": load_bnb_model,
}


def quant_format(folder: Path | str) -> str | None:
    """The on-disk format of a quantized Hugging Face folder, from its slm_meta.json (None: not quantized)."""
    meta = read_meta(folder)
    if meta.get("kind") != Kind.HF_QUANTIZED.value:
        return None
    fmt = meta.get(FORMAT_KEY)
    if fmt not in QUANT_FORMATS:
        raise ValueError(
            f"{Path(folder) / META_FILE} says kind {Kind.HF_QUANTIZED} with {FORMAT_KEY} {fmt!r}; "
            f"known formats: {', '.join(QUANT_FORMATS)}"
        )
    return fmt


def load_quantized(folder: Path | str, fmt: str, device: str = "cpu") -> Any:
    """Reopen a quantized folder saved in `fmt` (a key of QUANT_FORMATS) on `device`."""
    return QUANT_FORMATS[fmt](Path(folder), device)
