"""The pipeline with a throwaway `fake` stage (tests/integration/fake_stages.py): manifest,
skip on re-run, --restart, a failing stage, and a run killed with SIGKILL mid-stage."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

HERE = Path(__file__).resolve().parent
RECIPE = """\
name: fk
model: ./model
data: {source: data.jsonl, train: 4, eval: 2}
device: cpu
stages:
  - fake: {value: 1}
  - fake: {value: 2, produce: false, slow: true}
  - fake: {value: 3}
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder with a local model folder, a tiny JSONL data file and the recipe; `fake` registered."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "llama"}')
    rows = [{"prompt": f"{i}+1", "cot": f"{i}+1={i + 1}", "answer": str(i + 1)} for i in range(8)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text(RECIPE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(HERE))
    import fake_stages

    from slm_toolkit.registry import STAGES

    monkeypatch.setitem(STAGES, "fake", fake_stages.SPEC)
    monkeypatch.setenv("FAKE_SLEEP", "0")
    return tmp_path


def _run(overrides=(), restart=False):
    from slm_toolkit.pipeline import run
    from slm_toolkit.recipe import load_recipe

    buf = io.StringIO()
    run_dir = run(load_recipe("r.yaml", list(overrides)), restart=restart, console=Console(file=buf, width=200))
    return run_dir, buf.getvalue()


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_manifest_report_and_folders(project):
    run_dir, _ = _run()
    assert run_dir == Path("runs/fk")
    m = _manifest(run_dir)
    assert m["status"] == "completed" and m["name"] == "fk" and m["device"] == "cpu"
    assert [s["folder"] for s in m["stages"]] == ["01-fake", "02-fake", "03-fake"]
    for i, s in enumerate(m["stages"], 1):
        assert s["index"] == i and s["name"] == "fake" and s["status"] == "completed"
        assert len(s["config_hash"]) == 16 and len(s["input_artifact_hash"]) == 16
        assert s["config"]["value"] == i
        assert s["metrics"]["accuracy"] == pytest.approx(0.5 + i / 100)
        assert s["metrics"]["history"] == i - 1  # StageInput.history lists the earlier stages
        assert s["timings"]["wall_s"] >= 0
        assert (run_dir / s["folder"] / "metrics.json").is_file()
        assert (run_dir / s["folder"] / "report_section.md").read_text() == f"fake stage value {i}\n"
    # evaluate-like stage 2 passes stage 1's artifact on; stage 3 builds on it
    assert [s["artifact"] for s in m["stages"]] == ["01-fake", "01-fake", "03-fake"]
    assert m["stages"][1]["input_artifact_hash"] == m["stages"][0]["artifact_hash"]
    assert m["stages"][2]["input_artifact_hash"] == m["stages"][0]["artifact_hash"]
    assert (run_dir / "03-fake" / "weights.txt").read_text() == "1\n3\n"
    from slm_toolkit.core.artifacts import read_meta

    meta = read_meta(run_dir / "03-fake")  # the pipeline fills in the lineage the stage left out
    assert meta["kind"] == "hf" and meta["stage"] == "03-fake" and meta["parent"] == "01-fake"
    assert meta["metrics"]["accuracy"] == pytest.approx(0.53)
    assert read_meta(run_dir / "01-fake")["parent"] == str((project / "model").resolve())
    assert os.readlink(run_dir / "final") == "03-fake"
    assert "model: ./model" in (run_dir / "recipe.resolved.yaml").read_text()
    assert "train: 4" in (run_dir / "recipe.resolved.yaml").read_text()
    report = (run_dir / "report.md").read_text()
    assert "| 01-fake | completed | 0.510 | — | 2.0K | 4.00 | 1.5 |" in report
    assert "fake stage value 3" in report
    assert (run_dir / "report.png").stat().st_size > 1000
    assert not list(run_dir.glob("*.tmp"))


def test_rerun_skips_and_config_change_reruns_from_there(project):
    run_dir, _ = _run()
    first = _manifest(run_dir)
    _, out = _run()
    assert out.count("skipped") == 3
    again = _manifest(run_dir)
    assert [s["status"] for s in again["stages"]] == ["skipped"] * 3
    assert all(s["reused"] for s in again["stages"])
    assert [s["metrics"] for s in again["stages"]] == [s["metrics"] for s in first["stages"]]

    _, out = _run(["stages.2.fake.value=5"])  # only the last stage changed
    m = _manifest(run_dir)
    assert [bool(s.get("reused")) for s in m["stages"]] == [True, True, False]
    assert (run_dir / "03-fake" / "weights.txt").read_text() == "1\n5\n"

    _run(["stages.0.fake.value=7", "stages.2.fake.value=5"])  # the first stage changed: all rerun
    m = _manifest(run_dir)
    assert not any(s.get("reused") for s in m["stages"])
    assert (run_dir / "03-fake" / "weights.txt").read_text() == "7\n5\n"

    _run(["seed=1", "stages.0.fake.value=7", "stages.2.fake.value=5"])  # the seed is part of the key
    assert not any(s.get("reused") for s in _manifest(run_dir)["stages"])


def test_restart_reruns_everything(project):
    run_dir, _ = _run()
    (run_dir / "01-fake" / "stale.txt").write_text("left by an old run")
    _, out = _run(restart=True)
    assert "skipped" not in out
    m = _manifest(run_dir)
    assert [s["status"] for s in m["stages"]] == ["completed"] * 3
    assert not any(s.get("reused") for s in m["stages"])
    assert not (run_dir / "01-fake" / "stale.txt").exists()


def test_failing_stage_exits_1_with_one_line(project):
    from slm_toolkit.cli import app

    result = CliRunner().invoke(app, ["run", "r.yaml", "stages.1.fake.fail=true"])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    err = result.stderr.strip().splitlines()
    assert err[0] == "error: stage 02-fake failed: RuntimeError: fake stage asked to fail (value 2)"
    assert "runs/fk/error.log" in err[1]
    run_dir = Path("runs/fk")
    m = _manifest(run_dir)
    assert m["status"] == "failed"
    assert [s["status"] for s in m["stages"]] == ["completed", "failed", "pending"]
    assert m["stages"][1]["error"] == "RuntimeError: fake stage asked to fail (value 2)"
    assert "Traceback" in (run_dir / "error.log").read_text()
    assert not (run_dir / "02-fake").exists() and not (run_dir / "final").exists()
    assert "02-fake failed" in (run_dir / "report.md").read_text()

    ok = CliRunner().invoke(app, ["run", "r.yaml"])  # fixed: the completed stage is reused
    assert ok.exit_code == 0, ok.output
    assert "01-fake skipped" in ok.stdout and "report.md" in ok.stdout
    assert [s["status"] for s in _manifest(run_dir)["stages"]] == ["skipped", "completed", "completed"]


def test_missing_model_exits_1_and_writes_nothing(project):
    from slm_toolkit.cli import app

    result = CliRunner().invoke(app, ["run", "r.yaml", "model=./nope"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "nope" in result.stderr.splitlines()[0]
    assert not (project / "runs").exists()


def test_report_command_rebuilds(project):
    from slm_toolkit.cli import app

    run_dir, _ = _run()
    (run_dir / "report.md").unlink()
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0
    assert (run_dir / "report.md").is_file()
    assert CliRunner().invoke(app, ["report", "nowhere"]).exit_code == 2


def _start(project: Path, sleep: str) -> subprocess.Popen:
    env = {**os.environ, "FAKE_SLEEP": sleep, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(HERE / "fake_stages.py"), "run", "r.yaml"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigkill_mid_stage_then_resume(project):
    run_dir = project / "runs" / "fk"
    proc = _start(project, sleep="120")
    started = run_dir / "02-fake.tmp" / "started"
    deadline = time.monotonic() + 90
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started.exists(), proc.communicate()[0] if proc.poll() is not None else "stage never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    # no half-written folder looks complete, and the manifest does not say so either
    assert not (run_dir / "02-fake").exists() and not (run_dir / "03-fake").exists()
    assert (run_dir / "02-fake.tmp" / "checkpoint").is_file()  # kept for the trainer to resume
    m = _manifest(run_dir)
    assert [s["status"] for s in m["stages"]] == ["completed", "running", "pending"]
    assert not (run_dir / "final").exists()
    first_hash = m["stages"][0]["artifact_hash"]

    proc = _start(project, sleep="0")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "01-fake skipped" in out and "02-fake (resuming)" in out
    m = _manifest(run_dir)
    assert [s["status"] for s in m["stages"]] == ["skipped", "completed", "completed"]
    assert m["stages"][0]["reused"] and m["stages"][0]["artifact_hash"] == first_hash
    assert m["stages"][1]["metrics"]["resumed"] == 1.0  # it found its checkpoint
    assert not list(run_dir.glob("*.tmp"))
    assert os.readlink(run_dir / "final") == "03-fake"


def _tiny_llama(folder: Path, hidden: int, layers: int, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from slm_toolkit.demo.tokenizer import build_demo_tokenizer

    tok = build_demo_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


@pytest.mark.slow
def test_real_stages_through_the_cli(tmp_path, monkeypatch):
    """distill -> evaluate with tiny models built here: the pipeline with the real stages."""
    from slm_toolkit.cli import app

    monkeypatch.chdir(tmp_path)
    _tiny_llama(tmp_path / "teacher", 32, 2, seed=1)
    _tiny_llama(tmp_path / "student", 16, 1, seed=2)
    (tmp_path / "r.yaml").write_text(
        "name: tiny\nmodel: ./teacher\ndevice: cpu\ndata: {train: 32, eval: 4, task: {steps: 2}}\nstages:\n"
        "  - distill: {student: ./student, train: {batch_size: 16}}\n"
        "  - evaluate: {max_new_tokens: 8, latency_repeats: 1}\n"
    )
    result = CliRunner().invoke(app, ["run", "r.yaml"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    m = _manifest(run_dir)
    assert [s["status"] for s in m["stages"]] == ["completed", "completed"]
    assert m["stages"][1]["artifact"] == "01-distill"
    assert {"accuracy", "params", "bytes", "latency_ms_median"} <= set(m["stages"][1]["metrics"])
    assert (run_dir / "01-distill" / "model.safetensors").is_file()
    # the report names the artifact beside the stage, e.g. "02-evaluate (distilled)"
    assert re.search(r"\| 02-evaluate( \([^)]*\))? \| completed \|", (run_dir / "report.md").read_text())
    again = CliRunner().invoke(app, ["run", "r.yaml"])
    assert again.exit_code == 0 and again.stdout.count("skipped") == 2
