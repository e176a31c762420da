"""TensorRT engine from the ONNX export, through TensorRT's Python API (imported lazily).

Two optimization profiles, as TensorRT-LLM and onnxruntime-genai's TensorRT path do:
    0 "prefill": input [batch, seq] with an empty cache (past length 0)
    1 "decode":  input [batch, 1] with a cache of 1 .. seq.max - 1 positions
Everything up to the `tensorrt` calls (shapes, profiles, flags, input discovery, error
messages) is plain Python and tested without TensorRT; the build runs only where TensorRT and a
CUDA GPU are present (they cannot be installed on the project's CPU machines).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slm_toolkit.core.artifacts import ENGINE_FILE  # noqa: F401 - where the engine is written (export/stage)

PROFILE_NAMES = ("prefill", "decode")
Shape = tuple[int, ...]


def import_tensorrt() -> Any:
    """The `tensorrt` module, or ImportError that says what is missing and how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise ImportError(
            "TensorRT is not installed: pip install tensorrt from NVIDIA's package index "
            "(https://pypi.nvidia.com) on a machine with a CUDA GPU, or use `export: {format: onnx}` "
            "with the onnxruntime backend"
        ) from exc
    return tensorrt


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs a CUDA GPU and PyTorch sees none; use the onnxruntime backend on CPU")


@dataclass(frozen=True)
class DecoderInputs:
    """What the engine's inputs look like, read from the ONNX graph."""

    names: tuple[str, ...]  # graph input names, in graph order
    past: tuple[str, ...]  # past_key_values.* inputs
    kv_heads: int
    head_dim: int


def decoder_inputs(model_path: Path, head_dim: int | None = None) -> DecoderInputs:
    """Input names and cache geometry of an optimum merged decoder (no TensorRT needed)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    names = tuple(i.name for i in graph.input)
    past = tuple(n for n in names if n.startswith("past_key_values."))
    if not past or "input_ids" not in names:
        raise ValueError(
            f"{model_path} is not a decoder with KV cache (inputs: {list(names)}): "
            "export with task text-generation-with-past"
        )
    dims = [
        d.dim_value if d.HasField("dim_value") else None
        for d in next(i for i in graph.input if i.name == past[0]).type.tensor_type.shape.dim
    ]
    hd = dims[3] or head_dim
    if not dims[1] or not hd:
        raise ValueError(f"{model_path}: cannot tell the KV cache's heads/head_dim from the graph; pass head_dim")
    return DecoderInputs(names, past, int(dims[1]), int(hd))


def engine_profiles(
    inputs: DecoderInputs, batch: Sequence[int], seq: Sequence[int]
) -> list[dict[str, tuple[Shape, Shape, Shape]]]:
    """Per profile, {input name: (min, opt, max) shape}. batch/seq are (min, opt, max)."""
    b = tuple(batch)
    s_min, s_opt, s_max = seq
    if s_max < 2:
        raise ValueError("seq max must be >= 2 (one prompt token plus one generated token)")
    p_opt = min(max(s_opt, 1), s_max - 1)

    def tokens(n: tuple[int, int, int]) -> tuple[Shape, Shape, Shape]:
        return tuple((bb, nn) for bb, nn in zip(b, n))  # type: ignore[return-value]

    def cache(p: tuple[int, int, int]) -> tuple[Shape, Shape, Shape]:
        return tuple((bb, inputs.kv_heads, pp, inputs.head_dim) for bb, pp in zip(b, p))  # type: ignore[return-value]

    prefill = {
        "input_ids": tokens((s_min, s_opt, s_max)),
        "attention_mask": tokens((s_min, s_opt, s_max)),
        "position_ids": tokens((s_min, s_opt, s_max)),
    }
    prefill.update({name: cache((0, 0, 0)) for name in inputs.past})
    decode = {
        "input_ids": tokens((1, 1, 1)),
        "attention_mask": tokens((2, p_opt + 1, s_max)),
        "position_ids": tokens((1, 1, 1)),
    }
    decode.update({name: cache((1, p_opt, s_max - 1)) for name in inputs.past})
    return [{k: v for k, v in prof.items() if k in inputs.names} for prof in (prefill, decode)]


def builder_flags(precision: str) -> list[str]:
    """TensorRT BuilderFlag names for a precision. int8/fp8 keep FP16 on for the layers they skip.

    int8 quantizes through a calibrator (implicit quantization); fp8 applies to layers with FP8
    Q/DQ nodes in the ONNX (explicit quantization, e.g. from NVIDIA ModelOpt): without them the
    engine runs in fp16.
    """
    flags = {"fp32": [], "fp16": ["FP16"], "int8": ["FP16", "INT8"], "fp8": ["FP16", "FP8"]}
    if precision not in flags:
        raise ValueError(f"unknown TensorRT precision {precision!r}: choose fp32, fp16, int8 or fp8")
    return flags[precision]


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    batch: Sequence[int],
    seq: Sequence[int],
    head_dim: int | None = None,
    calibration: Sequence[Sequence[int]] = (),
    workspace_gb: float = 8.0,
) -> Path:
    """Parse the ONNX, add the profiles and flags, build and write the serialized engine."""
    inputs = decoder_inputs(onnx_path, head_dim)
    profiles = engine_profiles(inputs, batch, seq)
    flags = builder_flags(precision)
    if precision == "int8" and not calibration:
        raise ValueError("TensorRT int8 needs calibration prompts (the recipe's data gave none)")
    trt = import_tensorrt()
    require_cuda()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for name in flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for shapes in profiles:
        config.add_optimization_profile(_profile(builder, shapes))
    if precision == "int8":  # calibration runs prefill at one fixed shape: batch 1, seq opt
        length = int(seq[1])
        calib = engine_profiles(inputs, (1, 1, 1), (length, length, max(length, 2)))[0]
        config.set_calibration_profile(_profile(builder, calib))
        config.int8_calibrator = make_calibrator(trt, inputs, calibration, length, engine_path.with_suffix(".calib"))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    engine_path.write_bytes(bytes(serialized))
    return engine_path


def _profile(builder: Any, shapes: dict[str, tuple[Shape, Shape, Shape]]) -> Any:
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    return profile


def calibration_feeds(inputs: DecoderInputs, prompt: Sequence[int], length: int) -> dict[str, Any]:
    """One prefill batch (batch 1, exactly `length` tokens: cut, or left-padded and masked)."""
    import numpy as np

    tokens = list(prompt)[-length:]
    pad = length - len(tokens)
    ids = np.asarray([[0] * pad + tokens], dtype=np.int64)
    mask = np.asarray([[0] * pad + [1] * len(tokens)], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": np.maximum(mask.cumsum(-1) - 1, 0)}
    empty = np.zeros((1, inputs.kv_heads, 0, inputs.head_dim), dtype=np.float32)
    feeds.update({name: empty for name in inputs.past})
    return {k: v for k, v in feeds.items() if k in inputs.names}


def make_calibrator(
    trt: Any, inputs: DecoderInputs, prompts: Sequence[Sequence[int]], length: int, cache_file: Path
) -> Any:
    """An IInt8EntropyCalibrator2 over the prompts (TensorRT's API requires subclassing it)."""
    import torch

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.batches = [calibration_feeds(inputs, p, length) for p in prompts]
            self.live: list[torch.Tensor] = []

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):
            if not self.batches:
                return None
            feeds = self.batches.pop(0)
            self.live = [torch.from_numpy(feeds[n]).cuda() for n in names]
            return [t.data_ptr() for t in self.live]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.exists() else None

        def write_calibration_cache(self, cache):
            cache_file.write_bytes(bytes(cache))

    return Calibrator()
