"""The export stage end to end on tiny Llamas: ONNX folder, parity gate, optimum loads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from slm_toolkit.data.example import DataBundle
from slm_toolkit.demo.task import generate_examples
from slm_toolkit.demo.tokenizer import build_demo_tokenizer
from slm_toolkit.export.config import ExportConfig, output_kind
from slm_toolkit.export.stage import ExportParityError, run
from slm_toolkit.stage import StageInput


def hf_folder(folder: Path, head_dim: int | None) -> Path:
    tok = build_demo_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim or 16,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def stage_input(tmp: Path, head_dim: int | None = None) -> StageInput:
    src = hf_folder(tmp / "model", head_dim)
    examples = generate_examples(6, seed=0, steps=2, digits=1, ops="+-", verify=0)
    data = DataBundle(train=examples, eval=examples, source="builtin:arith-cot")
    work = tmp / "run" / "02-export.tmp"
    work.mkdir(parents=True)
    return StageInput(artifact=src, model=src, data=data, workdir=work, run_dir=tmp / "run", device="cpu", seed=0)


# head_dim 16 and 32 run the GroupQueryAttention graph, 8 the plain one (runtime/ort_fused.py)
@pytest.mark.parametrize("head_dim", [None, 32, 8], ids=["full", "head_pruned_fused", "head_pruned_plain"])
def test_onnx_export_passes_parity_and_optimum_loads_it(tmp_path, head_dim):
    from optimum.onnxruntime import ORTModelForCausalLM

    inp = stage_input(tmp_path, head_dim)
    cfg = ExportConfig(format="onnx", optimize="basic", parity={"prompts": 4, "new_tokens": 8})
    out = run(cfg, inp)
    folder = out.artifact
    assert folder == inp.workdir
    for name in ("model.onnx", "config.json", "tokenizer.json", "slm_meta.json"):
        assert (folder / name).exists(), name
    meta = json.loads((folder / "slm_meta.json").read_text())
    assert meta["kind"] == "onnx" and meta["stage"] == "export" and meta["parent"] == str(inp.artifact)
    m = out.metrics
    assert m["parity_max_abs_logit_diff"] < 1e-3 and m["parity_token_agreement"] == 1.0
    assert m["bytes"] > 0 and m["latency_ms_median"] > 0 and "logit diff" in out.extra["report_md"]

    # optimum's ORTModelForCausalLM loads the folder with no extra code, head-pruned or not
    ort_model = ORTModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([[1, 10, 11, 12, 4]])
    ref = LlamaForCausalLM.from_pretrained(inp.artifact)
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert ort_model.generate(ids, **kw).tolist() == ref.generate(ids, **kw).tolist()


def test_parity_gate_fails_the_stage(tmp_path):
    inp = stage_input(tmp_path)
    cfg = ExportConfig(optimize="none", parity={"atol": 1e-12, "prompts": 2, "new_tokens": 2})
    with pytest.raises(ExportParityError, match=r"parity gate failed: max \|logit diff\|"):
        run(cfg, inp)


def test_output_kind_and_order():
    assert output_kind(ExportConfig(), "hf") == "onnx"
    with pytest.raises(ValueError, match="export takes a Hugging Face model folder"):
        output_kind(ExportConfig(), "onnx")
