"""What the two ONNX Runtime generators share: session options, providers, the lm_head lookup.

onnxruntime.py (OrtGenerator, over optimum's graph) and ort_fused.py (FusedOrtGenerator, over the
GroupQueryAttention rewrite) both import this; neither imports the other's internals.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from slm_toolkit.core.errors import BackendUnavailable

_MATMULS = {
    "MatMul",
    "MatMulNBits",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "Gemm",
    "MatMulIntegerToFloat",
    "FusedMatMul",
    "QLinearMatMul",
}
_QUANT = {"DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear"}


def lm_head_input(g: Any, producer: dict) -> str | None:
    """The tensor the vocabulary projection reads (the final norm's output), or None.

    Walks back from `logits` to the first matrix multiply, then past any quantize/dequantize of
    its input; None unless every reader of that tensor leads to `logits`.
    """
    if "logits" not in producer:
        return None
    ancestors, head, queue = set(), None, deque([producer["logits"]])
    while queue:  # breadth-first from logits: the first matmul met is the lm_head
        node = queue.popleft()
        if id(node) in ancestors:
            continue
        ancestors.add(id(node))
        if node.op_type in _MATMULS and head is None:
            head = node
            continue
        queue.extend(producer[x] for x in node.input if x in producer)
    if head is None:
        return None
    hidden = head.input[0]
    while hidden in producer and producer[hidden].op_type in _QUANT:
        ancestors.add(id(producer[hidden]))
        hidden = producer[hidden].input[0]
    users = [n for n in g.node if hidden in n.input]
    if not users or any(id(n) not in ancestors for n in users) or hidden not in producer:
        return None
    return hidden


def session_options(threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = int(threads or 0)  # 0 = one per physical core
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def execution_providers(device: str) -> list[str]:
    import onnxruntime as ort

    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendUnavailable(
            "device 'cuda' needs onnxruntime-gpu with CUDAExecutionProvider; this onnxruntime has "
            f"{ort.get_available_providers()}: pip install onnxruntime-gpu, or use device='cpu'"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def as_numpy(value: Any) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.numpy()
