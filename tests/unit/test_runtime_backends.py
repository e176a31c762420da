"""The runtime's tables: backends by artifact kind, the one EOS/pad set-up, quantized reopening by slm_meta.json."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from slm_toolkit.core.artifacts import Kind, write_meta
from slm_toolkit.core.errors import BackendUnavailable
from slm_toolkit.runtime import loader
from slm_toolkit.runtime.backends import BACKEND_CHOICES, BACKENDS, backend_for
from slm_toolkit.runtime.base import set_special_tokens


def test_every_kind_has_exactly_one_backend():
    for kind in Kind:
        owners = [b.name for b in BACKENDS.values() if kind in b.kinds]
        assert owners == [backend_for(kind).name], kind
    assert backend_for(Kind.HF_QUANTIZED).name == "torch"
    assert BACKEND_CHOICES == ("auto", "torch", "onnxruntime", "tensorrt")


def test_factories_resolve_and_the_table_stays_light():
    import subprocess

    code = (
        "import sys; import slm_toolkit.runtime.backends, slm_toolkit.runtime.loader;"
        "print(any(m in sys.modules for m in ('torch', 'numpy', 'onnxruntime', 'tensorrt')))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    for b in BACKENDS.values():
        if b.name != "tensorrt":  # its module imports fine, but we do not need it here
            assert callable(b.load())


def test_config_choices_come_from_the_table():
    from typing import get_args

    from slm_toolkit.bench.config import BenchConfig
    from slm_toolkit.evaluate.config import EvaluateConfig
    from slm_toolkit.serving.config import ServeConfig

    for cls in (EvaluateConfig, ServeConfig, BenchConfig):
        assert get_args(cls.model_fields["backend"].annotation) == BACKEND_CHOICES, cls
        source = Path(sys.modules[cls.__module__].__file__).read_text(encoding="utf-8")
        assert "backend: BackendChoice" in source, f"{cls.__name__} spells the backend list again"


def test_loader_calls_the_rows_factory_with_threads(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    write_meta(tmp_path, kind="onnx")
    calls = []
    fake = SimpleNamespace(open_onnx=lambda folder, **kw: calls.append((folder, kw)) or "gen")
    monkeypatch.setitem(sys.modules, "slm_toolkit.runtime.onnxruntime", fake)
    assert loader.load_generator(tmp_path, threads=3) == "gen"
    assert calls == [(tmp_path, {"device": "cpu", "threads": 3, "trust_remote_code": False})]
    with pytest.raises(BackendUnavailable, match=r"a onnx artifact\) with backend 'torch'.*backend='onnxruntime'"):
        loader.load_generator(tmp_path, backend="torch")
    with pytest.raises(BackendUnavailable, match="choose one of auto, torch, onnxruntime, tensorrt"):
        loader.load_generator(tmp_path, backend="vllm")


def test_no_thread_setting_through_the_environment():
    root = Path(loader.__file__).resolve().parents[1]
    assert not [p for p in root.rglob("*.py") if "SLM_THREADS" in p.read_text(encoding="utf-8")]


# -- one EOS / pad set-up ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config, generation, expected",
    [
        ({"eos_token_id": 2, "pad_token_id": 0}, None, ((2,), 2, 0)),
        ({"eos_token_id": 2}, {"eos_token_id": [5, 2]}, ((5, 2), 5, 5)),  # generation config wins; pad = first EOS
        ({"eos_token_id": 2, "pad_token_id": None}, {"eos_token_id": None, "pad_token_id": 7}, ((2,), 2, 7)),
        ({}, {}, ((), None, 0)),
        ({"eos_token_id": 0}, None, ((0,), 0, 0)),  # id 0 is an id, not "missing"
    ],
)
def test_special_tokens_from_dicts(config, generation, expected):
    gen = SimpleNamespace()
    set_special_tokens(gen, config, generation)
    assert (gen.eos_token_ids, gen.eos_token_id, gen.pad_token_id) == expected


def test_special_tokens_from_objects_and_overrides():
    cfg = SimpleNamespace(eos_token_id=3, pad_token_id=None)
    gen_cfg = SimpleNamespace(eos_token_id=[4, 3], pad_token_id=None)
    gen = SimpleNamespace()
    set_special_tokens(gen, cfg, gen_cfg)
    assert (gen.eos_token_ids, gen.eos_token_id, gen.pad_token_id) == ((4, 3), 4, 4)
    set_special_tokens(gen, cfg, gen_cfg, eos_token_id=9, pad_token_id=1)
    assert (gen.eos_token_ids, gen.eos_token_id, gen.pad_token_id) == ((9,), 9, 1)


def test_every_backend_uses_the_one_set_up():
    runtime = Path(loader.__file__).parent
    for name in ("torch.py", "onnxruntime.py", "ort_fused.py", "tensorrt.py"):
        text = (runtime / name).read_text(encoding="utf-8")
        assert "set_special_tokens(self" in text and "stop_id_set(" not in text, name


# -- quantized folders are reopened by what slm_meta.json says -------------------------------------
def _folder(tmp_path, config='{"quantization_config": {"quant_method": "torchao"}}'):
    (tmp_path / "config.json").write_text(config)
    (tmp_path / "model.safetensors").write_bytes(b"")
    return tmp_path


def test_reopen_reads_the_format_from_meta(tmp_path, monkeypatch):
    from slm_toolkit.models import load, quantized

    folder = _folder(tmp_path)
    write_meta(folder, kind="hf-quantized", quant_format="bitsandbytes", scheme="bnb_int8")
    calls = []
    monkeypatch.setitem(quantized.QUANT_FORMATS, "bitsandbytes", lambda f, device: calls.append((f, device)) or "m")
    assert load.load_causal_lm(folder, device="cpu") == "m"
    assert calls == [(folder, "cpu")]  # the meta's format, although config.json names torchao


def test_a_float_folder_is_never_sniffed_as_quantized(tmp_path, monkeypatch):
    import transformers

    from slm_toolkit.models import load, quantized

    folder = _folder(tmp_path)  # config.json mentions torchao, slm_meta.json says hf
    write_meta(folder, kind="hf")
    monkeypatch.setattr(quantized, "QUANT_FORMATS", {})
    seen = []

    class Model:
        def eval(self):
            return self

    def from_pretrained(path, **kw):
        seen.append(path)
        return Model()

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    assert isinstance(load.load_causal_lm(folder), Model) and seen == [str(folder)]


def test_unknown_format_in_meta_is_a_clear_error(tmp_path):
    from slm_toolkit.models.load import load_causal_lm

    folder = _folder(tmp_path)
    write_meta(folder, kind="hf-quantized", quant_format="gptq")
    with pytest.raises(ValueError, match="quant_format 'gptq'; known formats: torchao, bitsandbytes"):
        load_causal_lm(folder)
