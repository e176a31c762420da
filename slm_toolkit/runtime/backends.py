"""The runtime backends: one row per backend, the only list of them.

A row names the artifact kinds the backend runs and its factory, a "module:function" taking
(folder, device, threads, trust_remote_code) and returning a Generator (runtime/base.py). The
loader picks the row by the artifact's kind; `slm serve`, `slm eval`, the evaluate stage and the
bench list their `backend` choices from here. Factories are imported only when their backend is
chosen, so this module (and `slm validate`) stays light and asking for one backend never
imports the others.

Adding a backend: its Generator and factory in a module of runtime/, one row below, and a test.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from slm_toolkit.core.artifacts import Kind


@dataclass(frozen=True)
class Backend:
    name: str
    kinds: frozenset[Kind]  # the artifact kinds it runs
    factory: str  # "module:function" (folder, device, threads, trust_remote_code) -> Generator
    needs: str  # what it needs beyond the package's dependencies, in words
    runs: str  # what it runs, for the message when it is asked for another kind

    def load(self) -> Callable[..., Any]:
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in [
        Backend(
            "torch",
            frozenset({Kind.HF, Kind.HF_QUANTIZED}),
            "slm_toolkit.runtime.torch:open_torch",
            needs="nothing (a CUDA GPU for device cuda)",
            runs="the torch backend runs Hugging Face folders; this one holds an exported model",
        ),
        Backend(
            "onnxruntime",
            frozenset({Kind.ONNX}),
            "slm_toolkit.runtime.onnxruntime:open_onnx",
            needs="nothing on CPU (onnxruntime-gpu for device cuda)",
            runs="the onnxruntime backend runs ONNX folders: export it first (`export: {format: onnx}`)",
        ),
        Backend(
            "tensorrt",
            frozenset({Kind.TENSORRT}),
            "slm_toolkit.runtime.tensorrt:open_tensorrt",
            needs="NVIDIA TensorRT and a CUDA GPU",
            runs="the tensorrt backend runs engine folders: build one with `export: {format: tensorrt}`",
        ),
    ]
}
BACKEND_CHOICES = ("auto", *BACKENDS)  # what a `backend:` option accepts
BackendChoice = Literal[BACKEND_CHOICES]  # type: ignore[valid-type]  # for config fields


def backend_for(kind: Kind) -> Backend:
    """The backend that runs artifacts of `kind`."""
    for backend in BACKENDS.values():
        if kind in backend.kinds:
            return backend
    raise ValueError(f"no runtime backend runs {kind} artifacts")  # every Kind has a row (tested)
