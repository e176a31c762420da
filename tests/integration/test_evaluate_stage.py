"""The evaluate stage end to end on tiny models trained in the test (HF and ONNX artifacts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slm_toolkit.data.example import DataBundle
from slm_toolkit.data.segments import tokenize_examples
from slm_toolkit.demo.builtin import build_model
from slm_toolkit.demo.task import generate_examples
from slm_toolkit.demo.tokenizer import build_demo_tokenizer
from slm_toolkit.demo.train_lm import train_causal_lm
from slm_toolkit.evaluate.config import EvaluateConfig
from slm_toolkit.evaluate.stage import run
from slm_toolkit.stage import StageInput

TASK = dict(steps=1, digits=1, ops="+", verify=0)  # learnable by a 1-layer model in seconds
ARCH = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64)


def _trained(folder: Path, steps: int) -> Path:
    tok = build_demo_tokenizer()
    model = build_model(ARCH, tok, 64, seed=0)
    seqs = tokenize_examples(tok, generate_examples(2000, 0, **TASK))
    train_causal_lm(model, seqs, pad_id=tok.pad_token_id, steps=steps, batch_size=32, lr=1e-2, seed=0, progress=False)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_models")
    return _trained(root / "reference", 200), _trained(root / "student", 60)


def _input(tmp_path: Path, artifact: Path, model: Path, n_eval: int = 24) -> StageInput:
    data = DataBundle(train=[], eval=generate_examples(n_eval, 1, **TASK), source="builtin:arith-cot")
    work = tmp_path / "run" / "01-evaluate"
    work.mkdir(parents=True, exist_ok=True)
    return StageInput(
        artifact=artifact, model=model, data=data, workdir=work, run_dir=tmp_path / "run", device="cpu", seed=0
    )


def test_evaluate_the_reference_itself(tmp_path, models):
    reference, _ = models
    out = run(EvaluateConfig(latency_repeats=2), _input(tmp_path, reference, reference))
    m = out.metrics
    assert out.artifact == reference
    assert m["accuracy"] > 0.5 and m["answer_rate"] == 1.0 and m["n_eval"] == 24
    assert m["retention"] == pytest.approx(1.0) and m["reference_accuracy"] == m["accuracy"]
    for key in (
        "ppl_prompt",
        "ppl_cot",
        "ppl_answer",
        "nll_cot",
        "params",
        "bytes",
        "latency_ms_median",
        "latency_ms_spread",
        "tok_s",
    ):
        assert key in m and m[key] >= 0, key
    assert m["ppl_answer"] < m["ppl_prompt"]  # the answer follows from the CoT; the prompt is random
    assert m["bytes"] >= (reference / "model.safetensors").stat().st_size
    assert all(isinstance(v, float) for v in m.values())
    assert "| accuracy (exact match) |" in out.extra["report_md"]
    assert m["agreement"] == 1.0 and m["vocab_size"] == len(build_demo_tokenizer())
    cached = list((tmp_path / "run" / "cache").glob("reference-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["accuracy"] == m["accuracy"]


def test_retention_against_the_reference_is_computed_once(tmp_path, models, monkeypatch):
    reference, student = models
    import slm_toolkit.runtime.loader as loader

    opened: list[Path] = []
    real = loader.load_generator

    def counting(artifact, *a, **k):
        opened.append(Path(artifact))
        return real(artifact, *a, **k)

    monkeypatch.setattr(loader, "load_generator", counting)
    cfg = EvaluateConfig(latency_repeats=1, batch_size=7)
    first = run(cfg, _input(tmp_path, student, reference)).metrics
    assert opened == [student, reference]
    assert first["retention"] == pytest.approx(first["accuracy"] / first["reference_accuracy"])
    assert first["reference_accuracy"] > first["accuracy"]  # 200 steps beat 60 steps
    assert 0.0 < first["agreement"] < 1.0
    second = run(cfg, _input(tmp_path, student, reference)).metrics
    assert opened == [student, reference, student]  # the reference's accuracy came from the run cache
    assert second["reference_accuracy"] == first["reference_accuracy"]
    assert second["accuracy"] == first["accuracy"]  # greedy: deterministic


def test_limit_and_reference_path(tmp_path, models):
    reference, student = models
    cfg = EvaluateConfig(limit=5, max_new_tokens=12, latency_repeats=1, reference=str(reference))
    m = run(cfg, _input(tmp_path, reference, student)).metrics  # `reference` overrides the recipe's model
    assert m["n_eval"] == 5 and m["accuracy"] > 0 and m["retention"] == pytest.approx(1.0)
    m = run(
        EvaluateConfig(limit=6, generate_limit=2, max_new_tokens=12, latency_repeats=1),
        _input(tmp_path, student, reference),
    ).metrics
    assert m["n_eval"] == 2 and m["n_perplexity"] == 6
    with pytest.raises(FileNotFoundError, match="evaluate.reference"):
        run(EvaluateConfig(reference=str(tmp_path / "nope")), _input(tmp_path, student, reference))


def test_onnx_artifact_is_evaluated_by_the_same_code(tmp_path, models):
    from slm_toolkit.models.onnx_export import export_onnx

    reference, student = models
    export_onnx(student, tmp_path / "onnx", optimize="none")
    cfg = EvaluateConfig(latency_repeats=1)
    hf = run(cfg, _input(tmp_path, student, reference)).metrics
    ort = run(cfg, _input(tmp_path, tmp_path / "onnx", reference)).metrics
    assert ort["accuracy"] == pytest.approx(hf["accuracy"]) and ort["answer_rate"] == hf["answer_rate"]
    # perplexity through ONNX Runtime's decode steps: the same numbers, minus the prompt's
    assert "ppl_prompt" not in ort and ort["ppl_cot"] == pytest.approx(hf["ppl_cot"], rel=1e-3)
    assert ort["ppl_answer"] == pytest.approx(hf["ppl_answer"], rel=1e-3)
    assert ort["agreement"] == pytest.approx(hf["agreement"], abs=0.01)
    assert abs(ort["params"] - hf["params"]) / hf["params"] < 0.05
    assert ort["retention"] == pytest.approx(hf["retention"])


def test_model_key_evaluates_another_model_and_passes_the_input_through(tmp_path, models):
    reference, student = models
    inp = _input(tmp_path, reference, reference)
    out = run(EvaluateConfig(latency_repeats=1, model=str(student)), inp)
    direct = run(EvaluateConfig(latency_repeats=1), _input(tmp_path / "b", student, reference))
    assert out.artifact == reference  # the pipeline's chain is unchanged
    assert out.metrics["accuracy"] == direct.metrics["accuracy"]
    assert out.metrics["params"] == direct.metrics["params"]
