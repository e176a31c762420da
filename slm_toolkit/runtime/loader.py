"""load_generator: open an artifact folder with the right backend, or say why it cannot.

The artifact's kind (slm_meta.json, else its files: core/artifacts.py) picks the backend from the
table in runtime/backends.py:

    hf, hf-quantized folder (config.json + *.safetensors)  -> torch
    onnx folder (model.onnx)                                -> onnxruntime
    tensorrt folder (model.engine)                          -> tensorrt

Backends are imported only when chosen, so asking for one never imports the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slm_toolkit.core.artifacts import Kind, artifact_kind
from slm_toolkit.core.errors import BackendUnavailable
from slm_toolkit.runtime.backends import BACKEND_CHOICES, BACKENDS, backend_for


def detect_kind(folder: Path) -> Kind:
    """The artifact's Kind (slm_meta.json, else its files); BackendUnavailable when it is none."""
    try:
        return artifact_kind(folder)
    except ValueError as exc:
        raise BackendUnavailable(str(exc)) from exc


def _check_backend(kind: Kind, backend: str, folder: Path) -> None:
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}: choose one of {', '.join(BACKEND_CHOICES)}")
    wanted = backend_for(kind)
    if backend == wanted.name:
        return
    raise BackendUnavailable(
        f"cannot run {folder} (a {kind} artifact) with backend {backend!r}: {BACKENDS[backend].runs}; "
        f"use backend='{wanted.name}' or 'auto'"
    )


def load_generator(
    artifact: Path,
    backend: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """Open `artifact` as a Generator (runtime/base.py). `threads` sets CPU intra-op threads for
    torch and onnxruntime (None: their default, one per core); the recipe's `threads` reaches here
    through StageInput.threads."""
    folder = Path(artifact)
    kind = detect_kind(folder)
    if backend != "auto":
        _check_backend(kind, backend, folder)
    factory = backend_for(kind).load()
    return factory(folder, device=device, threads=threads, trust_remote_code=trust_remote_code)
