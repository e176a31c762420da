"""load_generator: open an artifact folder with the right backend, or say why it cannot.

    hf folder (config.json + *.safetensors)  -> torch
    onnx folder (model.onnx)                  -> onnxruntime
    tensorrt folder (*.engine / *.plan)       -> tensorrt

Backends are imported only when chosen, so asking for one never imports the others.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from slm_toolkit.core.errors import BackendUnavailable

BACKENDS = ("torch", "onnxruntime", "tensorrt")
_BACKEND_FOR_KIND = {"hf": "torch", "onnx": "onnxruntime", "tensorrt": "tensorrt"}


def detect_kind(folder: Path) -> str:
    """The artifact kind ("hf", "onnx" or "tensorrt"): slm_meta.json, else the files (artifacts.py)."""
    from slm_toolkit.core.artifacts import artifact_kind

    try:
        return artifact_kind(folder)
    except ValueError as exc:
        raise BackendUnavailable(str(exc)) from exc


def _check_backend(kind: str, backend: str, folder: Path) -> None:
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}: choose one of auto, {', '.join(BACKENDS)}")
    wanted = _BACKEND_FOR_KIND[kind]
    if backend == wanted:
        return
    hints = {
        "torch": "the torch backend runs Hugging Face folders; this one holds an exported model",
        "onnxruntime": "the onnxruntime backend runs ONNX folders: export it first (`export: {format: onnx}`)",
        "tensorrt": "the tensorrt backend runs engine folders: build one with `export: {format: tensorrt}`",
    }
    raise BackendUnavailable(
        f"cannot run {folder} (a {kind} artifact) with backend {backend!r}: {hints[backend]}; "
        f"use backend='{wanted}' or 'auto'"
    )


def load_generator(
    artifact: Path,
    backend: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """Open `artifact` as a Generator (runtime/base.py). `threads` sets CPU intra-op threads
    (default: $SLM_THREADS, which `slm run` sets from the recipe's `threads`, else one per core)."""
    if threads is None and os.environ.get("SLM_THREADS", "").isdigit():
        threads = int(os.environ["SLM_THREADS"])
    folder = Path(artifact)
    kind = detect_kind(folder)
    if backend != "auto":
        _check_backend(kind, backend, folder)
    backend = _BACKEND_FOR_KIND[kind]
    if backend == "torch":
        import torch

        from slm_toolkit.runtime.torch import TorchGenerator

        if threads:
            torch.set_num_threads(threads)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("device 'cuda' was asked for but PyTorch sees no CUDA GPU; use device='cpu'")
        return TorchGenerator.from_folder(folder, device=device, trust_remote_code=trust_remote_code)
    if backend == "onnxruntime":
        from slm_toolkit.runtime.onnxruntime import load_onnx_generator

        return load_onnx_generator(folder, device=device, threads=threads)
    from slm_toolkit.runtime.tensorrt import TensorRTGenerator

    return TensorRTGenerator.from_folder(folder, device=device)
