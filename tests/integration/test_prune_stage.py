"""The prune stage end to end on a tiny GQA Llama (hidden 64, 4 heads / 2 KV heads, 3 layers).

The stage must write a plain Hugging Face folder that AutoModelForCausalLM reloads with no
custom code, pass its reload and ONNX gates, report before/after figures, and refuse ratios
the model cannot take before doing any work.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from slm_toolkit.data.example import DataBundle
from slm_toolkit.demo.task import generate_examples
from slm_toolkit.demo.tokenizer import build_demo_tokenizer
from slm_toolkit.prune.config import PruneConfig
from slm_toolkit.stage import StageInput

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny") / "hf"
    tok = build_demo_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data():
    ex = generate_examples(n=8, seed=0, steps=1, digits=1, ops="+-", verify=0)
    return DataBundle(train=ex[:6], eval=ex[6:], source="test")


def _input(artifact, data, tmp_path):
    work = tmp_path / "02-prune"
    work.mkdir()
    return StageInput(
        artifact=artifact, model=artifact, data=data, workdir=work, run_dir=tmp_path, device="cpu", seed=0
    )


def test_width_and_depth_prune_writes_a_plain_hf_folder(hf_model, data, tmp_path):
    from transformers import AutoModelForCausalLM

    from slm_toolkit.core.artifacts import read_meta
    from slm_toolkit.prune.stage import run

    cfg = PruneConfig(
        heads=0.5,
        mlp=0.5,
        layers=1,
        importance="taylor",
        calibration={"samples": 6, "batch_size": 3},
        round_to=8,
        measure={"limit": 5, "generate": 1, "max_new_tokens": 8},
    )
    inp = _input(hf_model, data, tmp_path)
    out = run(cfg, inp)

    assert out.artifact == inp.workdir
    config = json.loads((out.artifact / "config.json").read_text())
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]) == (2, 2, 1)
    assert (config["intermediate_size"], config["head_dim"], config["hidden_size"]) == (64, 16, 64)
    assert (out.artifact / "model.safetensors").is_file() and (out.artifact / "tokenizer.json").is_file()
    assert not (out.artifact / ".onnx_check").exists()
    model = AutoModelForCausalLM.from_pretrained(out.artifact)  # no custom code
    assert model.model.layers[0].self_attn.k_proj.out_features == 16

    m = out.metrics
    assert m["params"] < 0.6 * m["input_params"] and m["bytes"] < m["input_bytes"]
    assert m["reload_max_abs_logit_diff"] <= 1e-4 and m["onnx_token_agreement"] == 1.0
    assert 0.0 <= m["accuracy"] <= 1.0 and m["input_latency_ms_median"] > 0 and m["speedup"] > 0
    assert m["layers_removed"] == 1 and m["kv_heads_removed"] == 1
    assert m["n_eval"] == 1 and m["ppl_cot"] > 0 and m["input_ppl_cot"] > 0  # bounded by `measure`
    meta = read_meta(out.artifact)
    assert meta["stage"] == "prune" and meta["kind"] == "hf" and meta["parent"] == str(hf_model)
    assert "### prune" in out.extra["report_md"]


@pytest.mark.parametrize(
    "cfg, message",
    [
        (dict(heads=0.9), "would remove all 2 KV heads"),
        (dict(layers=3), "would remove all 3 decoder layers"),
        (dict(mlp=0.95, round_to=8), "leaves fewer than round_to=8"),
        (dict(hidden=0.5, round_to=64), "leaves fewer than round_to=64 of the model's hidden_size=64"),
    ],
)
def test_impossible_ratios_fail_before_any_work(hf_model, data, tmp_path, cfg, message):
    from slm_toolkit.prune.stage import run

    inp = _input(hf_model, data, tmp_path)
    with pytest.raises(ValueError, match=message):
        run(PruneConfig(**cfg), inp)
    assert list(inp.workdir.iterdir()) == []


def test_hidden_width_prune_passes_both_gates(hf_model, data, tmp_path):
    """hidden_size // num_attention_heads != head_dim afterwards: the ONNX export must still agree."""
    from slm_toolkit.prune.stage import run

    cfg = PruneConfig(hidden=0.25, importance="activation", calibration={"samples": 4, "batch_size": 4})
    out = run(cfg, _input(hf_model, data, tmp_path))
    config = json.loads((out.artifact / "config.json").read_text())
    assert (config["hidden_size"], config["num_attention_heads"], config["head_dim"]) == (48, 4, 16)
    assert out.metrics["onnx_token_agreement"] == 1.0 and out.metrics["reload_max_abs_logit_diff"] <= 1e-4


def test_gates_fail_on_a_mismatched_or_broken_model(hf_model, data, tmp_path):
    from transformers import AutoModelForCausalLM

    from slm_toolkit.models.load import load_tokenizer
    from slm_toolkit.prune.importance import calibration_batches
    from slm_toolkit.prune.stage import PruneGateError, reload_gate, run

    batch = calibration_batches(load_tokenizer(hf_model), data.train, 2, 2)[0]
    model = AutoModelForCausalLM.from_pretrained(hf_model).eval()
    reloaded, diff = reload_gate(model, hf_model, batch)
    assert diff == 0.0
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[:, 0] += 1.0  # memory no longer matches the folder
    with pytest.raises(PruneGateError, match="reloaded by AutoModelForCausalLM"):
        reload_gate(model, hf_model, batch)

    broken = tmp_path / "nan"
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    model.save_pretrained(broken)
    load_tokenizer(hf_model).save_pretrained(broken)
    with pytest.raises(PruneGateError, match="non-finite logits"):
        run(PruneConfig(mlp=0.5), _input(broken, data, tmp_path))
