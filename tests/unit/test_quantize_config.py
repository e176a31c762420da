"""QuantizeConfig validation, output kinds, the fp8 hardware check and scheme -> backend mapping."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from pydantic import ValidationError

from slm_toolkit.quantize.config import QuantizeConfig, output_kind
from slm_toolkit.registry import STAGES


def test_defaults_and_yaml_keys():
    cfg = QuantizeConfig.model_validate({"scheme": "ort_int8_static", "calibration": {"samples": 8}})
    assert (cfg.scheme, cfg.calibration.samples, cfg.block_size) == ("ort_int8_static", 8, 32)
    assert QuantizeConfig().scheme == "int8_dynamic"
    assert QuantizeConfig(scheme="ort_int4", block_size=128).block_size == 128


@pytest.mark.parametrize(
    "raw, where, message",
    [
        ({"scheme": "int3"}, "scheme", "Input should be"),
        ({"scheme": "int8_dynamic", "bits": 8}, "bits", "Extra inputs are not permitted"),
        ({"calibration": {"samples": 0}}, "samples", "must be >= 1"),
        ({"calibration": {"sample": 4}}, "sample", "Extra inputs are not permitted"),
        ({"block_size": 48}, "block_size", "power of two >= 16"),
        ({"block_size": 8}, "block_size", "power of two >= 16"),
        ({"limit": 0}, "limit", "must be >= 1"),
    ],
)
def test_invalid_values_name_the_field(raw, where, message):
    with pytest.raises(ValidationError) as err:
        QuantizeConfig.model_validate(raw)
    text = str(err.value)
    assert where in text and message in text


def _fake_cuda(monkeypatch, available: bool, capability=(9, 0), name="NVIDIA H200"):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)


def test_fp8_without_cuda_is_a_config_error(monkeypatch):
    _fake_cuda(monkeypatch, available=False)
    with pytest.raises(ValidationError) as err:
        QuantizeConfig(scheme="fp8")
    text = str(err.value)
    assert "scheme" in text and "compute capability >= 8.9" in text and "no CUDA device" in text


def test_fp8_on_an_old_gpu_names_its_capability(monkeypatch):
    _fake_cuda(monkeypatch, available=True, capability=(8, 0), name="NVIDIA A100")
    with pytest.raises(ValidationError, match=r"A100 has 8\.0"):
        QuantizeConfig(scheme="fp8")


@pytest.mark.parametrize("capability", [(8, 9), (9, 0), (10, 0)])
def test_fp8_accepted_on_ada_and_hopper(monkeypatch, capability):
    _fake_cuda(monkeypatch, available=True, capability=capability)
    assert QuantizeConfig(scheme="fp8").scheme == "fp8"


def test_fp8_maps_to_torchao_float8_per_row():
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    from slm_toolkit.quantize.fp8 import fp8_config

    cfg = fp8_config()
    assert isinstance(cfg, Float8DynamicActivationFloat8WeightConfig)
    assert cfg.granularity == [PerRow(), PerRow()]  # activations per token, weights per row


def test_int8_schemes_map_to_torchao_configs():
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    from slm_toolkit.quantize.torchao_backend import ao_config

    assert isinstance(ao_config("int8_weight_only"), Int8WeightOnlyConfig)
    assert isinstance(ao_config("int8_dynamic"), Int8DynamicActivationInt8WeightConfig)
    with pytest.raises(ValueError, match="not a torchao scheme"):
        ao_config("bnb_nf4")


def test_quantize_fp8_refuses_to_run_without_cuda(monkeypatch, tmp_path):
    from slm_toolkit.quantize.fp8 import quantize_fp8

    _fake_cuda(monkeypatch, available=False)
    with pytest.raises(RuntimeError, match="compute capability >= 8.9"):
        quantize_fp8(tmp_path / "in", tmp_path / "out", "cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("scheme", ["ort_int8_dynamic", "ort_int8_static", "ort_int4"])
def test_ort_schemes_need_an_onnx_input(scheme):
    cfg = QuantizeConfig(scheme=scheme)
    assert output_kind(cfg, "onnx") == "onnx"
    with pytest.raises(ValueError) as err:
        output_kind(cfg, "hf")
    assert str(err.value) == (
        f"{scheme} applies to an exported ONNX artifact: put `export: {{format: onnx}}` before it"
    )


@pytest.mark.parametrize("scheme", ["int8_weight_only", "int8_dynamic", "bnb_int8", "bnb_nf4"])
def test_torch_schemes_need_a_hf_input(scheme):
    cfg = QuantizeConfig(scheme=scheme)
    assert output_kind(cfg, "hf") == "hf-quantized"
    with pytest.raises(ValueError, match="before `export`"):
        output_kind(cfg, "onnx")


@pytest.mark.parametrize("scheme", ["int8_weight_only", "bnb_int8"])
def test_export_or_distill_after_torch_quantization_is_a_recipe_error(tmp_path, scheme):
    from slm_toolkit.core.errors import RecipeError
    from slm_toolkit.recipe import load_recipe

    for later, path in [
        ("export: {format: onnx}", "stages[1].export"),
        ("distill: {student: previous}", "stages[1].distill"),
    ]:
        recipe = tmp_path / "r.yaml"
        recipe.write_text(
            "name: q\nmodel: builtin:arith-teacher\nstages:\n"
            f"  - quantize: {{scheme: {scheme}}}\n  - {later}\n  - evaluate: {{}}\n"
        )
        with pytest.raises(RecipeError) as err:
            load_recipe(recipe, [])
        assert f"{path}: accepts hf artifacts, but its input is hf-quantized" in str(err.value)


def test_registry_uses_this_output_kind():
    spec = STAGES["quantize"]
    assert spec.config is QuantizeConfig
    assert spec.output_kind(QuantizeConfig(scheme="ort_int4"), "onnx") == "onnx"
    with pytest.raises(ValueError, match="ONNX artifact"):
        spec.output_kind(QuantizeConfig(scheme="ort_int4"), "hf")


def test_nf4_cpu_dims_check_names_the_layers():
    from slm_toolkit.quantize.bnb import check_nf4_cpu_dims

    check_nf4_cpu_dims({"a": (64, 32), "b": (128, 256)})  # fits: no error
    with pytest.raises(ValueError) as err:
        check_nf4_cpu_dims({"ok": (64, 64), "mlp.up_proj": (48, 96), "k_proj": (64, 24)})
    text = str(err.value)
    assert "mlp.up_proj (48->96)" in text and "k_proj (64->24)" in text and "ok (" not in text
    assert "bnb_int8" in text  # says what to use instead


def _figures(latency, spread=1.0, size=100.0, acc=0.5):
    return {
        "bytes": size,
        "accuracy": acc,
        "answer_rate": 1.0,
        "latency_ms_median": latency,
        "latency_ms_spread": spread,
        "tok_s": 32 / latency * 1000,
    }


def test_compare_flags_only_clearly_slower_artifacts():
    from slm_toolkit.quantize.stage import compare, report_md

    slow = compare(_figures(100.0), _figures(130.0, size=30.0, acc=0.4))
    assert slow["slower_than_input"] == 1.0 and slow["latency_ratio"] == pytest.approx(1.3)
    assert slow["bytes_ratio"] == pytest.approx(0.3) and slow["accuracy_delta"] == pytest.approx(-0.1)
    assert "**Warning:** the int8_dynamic artifact decodes slower" in report_md("int8_dynamic", slow)
    noise = compare(_figures(100.0), _figures(103.0))  # within 5%: not flagged
    assert noise["slower_than_input"] == 0.0 and "Warning" not in report_md("x", noise)
    wide = compare(_figures(100.0, spread=20.0), _figures(115.0))  # within the measured spread
    assert wide["slower_than_input"] == 0.0
    fast = compare(_figures(100.0), _figures(60.0))
    assert fast["slower_than_input"] == 0.0 and fast["latency_ratio"] == pytest.approx(0.6)


# -- the scheme table drives validation, kinds, the stage and the docs ------------------------------
def test_scheme_names_come_from_the_table():
    from typing import get_args

    from slm_toolkit.quantize.schemes import SCHEMES

    assert get_args(QuantizeConfig.model_fields["scheme"].annotation) == tuple(SCHEMES)
    with pytest.raises(ValidationError) as err:
        QuantizeConfig(scheme="int3")
    assert all(name in str(err.value) for name in SCHEMES)  # the message lists every row


def test_every_row_is_consistent():
    from slm_toolkit.core.artifacts import Kind
    from slm_toolkit.models.quantized import QUANT_FORMATS
    from slm_toolkit.quantize.schemes import SCHEMES

    for row in SCHEMES.values():
        assert output_kind(QuantizeConfig.model_construct(scheme=row.name), row.accepts) == row.produces
        assert callable(row.quantize) and row.backend in ("torchao", "bitsandbytes", "onnxruntime")
        if row.produces == Kind.HF_QUANTIZED:  # reopened by the format it names, from slm_meta.json
            assert row.reopen_format in QUANT_FORMATS
        else:  # reopened by its kind alone
            assert row.reopen_format is None
    assert [r.name for r in SCHEMES.values() if r.calibrated] == ["ort_int8_static"]


def test_a_rows_hardware_check_is_the_validator(monkeypatch):
    from slm_toolkit.quantize import schemes

    row = schemes.SCHEMES["int8_dynamic"]
    monkeypatch.setitem(schemes.SCHEMES, "int8_dynamic", replace(row, unavailable=lambda: "needs a flux capacitor"))
    with pytest.raises(ValidationError, match="int8_dynamic needs a flux capacitor"):
        QuantizeConfig(scheme="int8_dynamic")


def test_the_stage_calls_the_rows_function(monkeypatch, tmp_path):
    """quantize.stage has no per-scheme code: it runs the row's function and writes the row's format."""
    from slm_toolkit.core.artifacts import read_meta
    from slm_toolkit.data.example import DataBundle, Example
    from slm_toolkit.quantize import schemes, stage
    from slm_toolkit.stage import StageInput

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(), dst.mkdir()
    (src / "config.json").write_text("{}")
    (src / "tokenizer.json").write_text("{}")
    calls = []
    row = replace(schemes.SCHEMES["bnb_int8"], quantize=lambda s, d, job: calls.append((s, d, job)))
    monkeypatch.setitem(schemes.SCHEMES, "bnb_int8", row)
    monkeypatch.setattr(stage, "load_tokenizer", lambda folder: None)
    opened = []
    monkeypatch.setattr(stage, "open_generator", lambda folder, device, threads: opened.append(read_meta(folder)))
    monkeypatch.setattr(stage, "interleaved_latency", lambda gens, *a: {n: {"latency_ms_median": 1.0} for n in gens})
    monkeypatch.setattr(stage, "prompt_ids", lambda tok, text: [1])
    monkeypatch.setattr(stage, "measure", lambda gen, tok, ex, folder, speed: _figures(1.0))
    data = DataBundle(train=[], eval=[Example(prompt="1+1=", cot="", answer="2")], source="t")
    inp = StageInput(src, src, data, dst, tmp_path, "cpu", 0, threads=3)
    out = stage.run(QuantizeConfig(scheme="bnb_int8", limit=1), inp)
    assert [(s, d, job.scheme, job.device) for s, d, job in calls] == [(src, dst, "bnb_int8", "cpu")]
    assert opened[1]["kind"] == "hf-quantized" and opened[1]["quant_format"] == "bitsandbytes"  # before measuring
    meta = read_meta(out.artifact)
    assert (meta["kind"], meta["scheme"], meta["quant_format"]) == ("hf-quantized", "bnb_int8", "bitsandbytes")
    assert "metrics" in meta and (dst / "tokenizer.json").exists()


def test_readme_lists_every_scheme():
    import re
    from pathlib import Path

    from slm_toolkit.quantize.schemes import SCHEMES

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `quantize` |"))
    listed = re.search(r"`scheme: ([^`]+)`", row).group(1).replace("\\|", "|").split("|")
    assert listed == list(SCHEMES), "README's quantize row must name every scheme of quantize/schemes.py, in order"


def test_a_quantized_model_folder_fails_the_order_check(tmp_path):
    """A recipe whose `model:` is a torchao/bnb folder: its slm_meta.json says hf-quantized."""
    from slm_toolkit.core.artifacts import write_meta
    from slm_toolkit.core.errors import RecipeError
    from slm_toolkit.recipe import load_recipe

    folder = tmp_path / "q"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    write_meta(folder, kind="hf-quantized", quant_format="torchao", scheme="int8_dynamic")
    for later in ("export: {format: onnx}", "distill: {student: previous}", "prune: {heads: 0.25}"):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"name: q\nmodel: {folder}\nstages:\n  - {later}\n")
        with pytest.raises(RecipeError) as err:
            load_recipe(recipe, [])
        name = later.split(":")[0]
        assert (
            f"stages[0].{name}: accepts hf artifacts, but its input is hf-quantized (from the recipe's model)"
            in str(err.value)
        )
    recipe.write_text(f"name: q\nmodel: {folder}\nstages:\n  - evaluate: {{}}\n  - bench: {{}}\n")
    assert [s.input_kind for s in load_recipe(recipe, []).stages] == ["hf-quantized", "hf-quantized"]
