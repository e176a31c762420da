"""`slm eval` wiring (with a stand-in evaluate stage) and `slm validate`'s summary."""

from __future__ import annotations

from typer.testing import CliRunner

from slm_toolkit import cli
from slm_toolkit.cli import app
from slm_toolkit.stage import StageOutput


def test_eval_calls_the_evaluate_stage_and_prints_metrics(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cfg, inp):
        seen.update(cfg=cfg, inp=inp, workdir_exists=inp.workdir.is_dir())
        return StageOutput(artifact=inp.artifact, metrics={"accuracy": 0.875, "params": 1234})

    monkeypatch.setattr(cli, "evaluate_run", fake_run)
    artifact = tmp_path / "art"
    artifact.mkdir()
    (artifact / "config.json").write_text("{}")
    result = CliRunner().invoke(app, ["eval", str(artifact), "--eval", "7", "--backend", "torch", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and "0.875" in result.stdout and "1234" in result.stdout
    inp = seen["inp"]
    assert seen["cfg"].backend == "torch" and seen["workdir_exists"]
    assert inp.artifact == artifact and inp.model == artifact and inp.device == "cpu"
    assert len(inp.data.eval) == 7 and inp.data.source == "builtin:arith-cot"
    assert not inp.workdir.exists()  # a temporary folder, removed afterwards


def test_eval_usage_errors(tmp_path):
    assert CliRunner().invoke(app, ["eval", str(tmp_path / "missing")]).exit_code == 2
    bad = CliRunner().invoke(app, ["eval", str(tmp_path), "--backend", "tpu"])
    assert bad.exit_code == 2
    assert bad.stderr.startswith("error: --backend:")


def test_validate_prints_stages_and_kinds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(
        "name: q\nmodel: m\nstages:\n  - export: {format: onnx}\n  - quantize: {scheme: ort_int8_dynamic}\n"
        "  - evaluate: {}\n"
    )
    result = CliRunner().invoke(app, ["validate", "r.yaml"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "01-export" in out and "02-quantize" in out and "03-evaluate" in out
    assert out.count("onnx") >= 4  # export: hf -> onnx, quantize: onnx -> onnx, evaluate: onnx -> onnx
    assert "3 stage(s) valid" in out
