"""Our side of the TensorRT boundary: config errors, profiles, flags, builder calls, loader errors.

TensorRT cannot be installed on the project's machines; the builder is exercised against a
recording stand-in module that has TensorRT's API shape.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from slm_toolkit.core.errors import BackendUnavailable
from slm_toolkit.export import tensorrt as trt_export
from slm_toolkit.export.config import ExportConfig, tensorrt_unavailable_reason
from slm_toolkit.runtime.loader import load_generator


def decoder_onnx(path: Path, head_dim: int | str = 8, kv_heads: int = 2) -> Path:
    """A graph with an optimum decoder's inputs (the body does not matter on our side)."""
    tokens = ["batch_size", "sequence_length"]
    cache = ["batch_size", kv_heads, "past_sequence_length", head_dim]
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, tokens)
        for n in ("input_ids", "attention_mask", "position_ids")
    ]
    past = [f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, cache) for n in past]
    outputs = [
        helper.make_tensor_value_info(n.replace("past_key_values", "present"), TensorProto.FLOAT, cache) for n in past
    ]
    nodes = [helper.make_node("Identity", [n], [n.replace("past_key_values", "present")]) for n in past]
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", inputs, outputs)), str(path))
    return path


def test_config_fails_early_naming_tensorrt():
    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are present here")
    with pytest.raises(ValueError, match="TensorRT, which is not installed|needs a CUDA GPU"):
        ExportConfig(format="tensorrt")
    with pytest.raises(ValueError, match="tensorrt only"):
        ExportConfig(format="onnx", precision="fp16")
    with pytest.raises(ValueError, match="min <= opt <= max"):
        ExportConfig(profiles={"seq": [8, 4, 16]})


def test_unavailable_reasons(monkeypatch):
    import importlib.util

    import torch

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "needs a CUDA GPU" in tensorrt_unavailable_reason()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100")
    assert tensorrt_unavailable_reason("fp16") is None
    reason = tensorrt_unavailable_reason("fp8")
    assert "compute capability >= 8.9" in reason and "A100 has 8.0" in reason
    cfg = ExportConfig(format="tensorrt")
    assert cfg.precision == "fp16"


def test_decoder_inputs_and_profiles(tmp_path):
    inputs = trt_export.decoder_inputs(decoder_onnx(tmp_path / "m.onnx"))
    assert (inputs.kv_heads, inputs.head_dim, len(inputs.past)) == (2, 8, 4)
    prefill, decode = trt_export.engine_profiles(inputs, (1, 4, 8), (1, 64, 512))
    assert prefill["input_ids"] == ((1, 1), (4, 64), (8, 512))
    assert prefill["past_key_values.0.key"] == ((1, 2, 0, 8), (4, 2, 0, 8), (8, 2, 0, 8))
    assert decode["input_ids"] == ((1, 1), (4, 1), (8, 1))
    assert decode["attention_mask"] == ((1, 2), (4, 65), (8, 512))
    assert decode["past_key_values.1.value"] == ((1, 2, 1, 8), (4, 2, 64, 8), (8, 2, 511, 8))
    with pytest.raises(ValueError, match="seq max must be >= 2"):
        trt_export.engine_profiles(inputs, (1, 1, 1), (1, 1, 1))


def test_symbolic_head_dim_needs_config(tmp_path):
    path = decoder_onnx(tmp_path / "m.onnx", head_dim="past_head_dim")
    with pytest.raises(ValueError, match="pass head_dim"):
        trt_export.decoder_inputs(path)
    assert trt_export.decoder_inputs(path, head_dim=6).head_dim == 6


def test_flags():
    assert trt_export.builder_flags("fp32") == []
    assert trt_export.builder_flags("fp16") == ["FP16"]
    assert trt_export.builder_flags("int8") == ["FP16", "INT8"]
    assert trt_export.builder_flags("fp8") == ["FP16", "FP8"]
    with pytest.raises(ValueError, match="unknown TensorRT precision"):
        trt_export.builder_flags("int4")


def test_build_without_tensorrt_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as when it is not installed
    with pytest.raises(ImportError, match="TensorRT is not installed: pip install tensorrt"):
        trt_export.build_engine(decoder_onnx(tmp_path / "m.onnx"), tmp_path / "e", "fp16", (1, 1, 4), (1, 16, 64))


def fake_tensorrt(record: dict) -> types.ModuleType:
    """A stand-in with TensorRT's API shape that records what the builder is asked to do."""

    class Profile:
        def __init__(self):
            self.shapes = {}
            record.setdefault("profiles", []).append(self.shapes)

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (lo, opt, hi)

    class Config:
        def set_memory_pool_limit(self, pool, size):
            record["workspace"] = size

        def set_flag(self, flag):
            record.setdefault("flags", []).append(flag)

        def add_optimization_profile(self, profile):
            record.setdefault("added", []).append(profile.shapes)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return "network"

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"ENGINE"

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            record["parsed"] = path
            return True

    mod = types.ModuleType("tensorrt")
    mod.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    mod.Builder, mod.OnnxParser = Builder, Parser
    mod.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    mod.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", FP8="FP8")
    return mod


def test_build_engine_drives_the_builder(tmp_path, monkeypatch):
    record: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(record))
    monkeypatch.setattr(trt_export, "require_cuda", lambda: None)
    onnx_path = decoder_onnx(tmp_path / "m.onnx")
    out = trt_export.build_engine(onnx_path, tmp_path / "model.engine", "fp8", (1, 2, 8), (1, 32, 256), workspace_gb=1)
    assert out.read_bytes() == b"ENGINE"
    assert record["parsed"] == str(onnx_path)
    assert record["flags"] == ["FP16", "FP8"] and record["workspace"] == 1 << 30
    assert len(record["added"]) == 2
    assert record["added"][1]["past_key_values.0.key"] == ((1, 2, 1, 8), (2, 2, 32, 8), (8, 2, 255, 8))
    with pytest.raises(ValueError, match="int8 needs calibration prompts"):
        trt_export.build_engine(onnx_path, tmp_path / "x.engine", "int8", (1, 1, 1), (1, 8, 16))


def test_calibration_feeds_have_the_fixed_shape(tmp_path):
    inputs = trt_export.decoder_inputs(decoder_onnx(tmp_path / "m.onnx"))
    feeds = trt_export.calibration_feeds(inputs, [5, 6, 7], length=5)
    assert feeds["input_ids"].tolist() == [[0, 0, 5, 6, 7]]
    assert feeds["attention_mask"].tolist() == [[0, 0, 1, 1, 1]]
    assert feeds["position_ids"].tolist() == [[0, 0, 0, 1, 2]]
    assert feeds["past_key_values.0.key"].shape == (1, 2, 0, 8)
    assert trt_export.calibration_feeds(inputs, list(range(9)), length=4)["input_ids"].tolist() == [[5, 6, 7, 8]]


def test_loader_explains_what_tensorrt_needs(tmp_path):
    from slm_toolkit.runtime.tensorrt import tensorrt_missing

    if tensorrt_missing() is None:
        pytest.skip("TensorRT and a GPU are present here")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.engine").write_bytes(b"")
    with pytest.raises(BackendUnavailable, match="TensorRT backend needs .*tensorrt package|CUDA GPU"):
        load_generator(tmp_path)
    with pytest.raises(BackendUnavailable, match="use backend='tensorrt'"):
        load_generator(tmp_path, backend="onnxruntime")
