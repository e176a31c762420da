"""Quantizing a model with tied embeddings: the lm_head is quantized too, and so is the table."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from slm_toolkit.models.onnx_export import export_onnx
from slm_toolkit.quantize.ort import quantize_onnx, untie_lm_head
from slm_toolkit.runtime.loader import load_generator

PROMPTS = [[1, 5, 6, 7, 8, 9, 10], [1, 11, 12], [1, 20, 21, 22, 23]]


@pytest.fixture(scope="module")
def tied_onnx(tmp_path_factory):
    """A tiny Llama with tie_word_embeddings=True, exported like SmolLM2 (lm_head = Transpose(embedding))."""
    root = tmp_path_factory.mktemp("tied")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        eos_token_id=2,
        pad_token_id=0,
        bos_token_id=1,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(30.0)  # decisive argmax: no near-ties after quantization
    model.save_pretrained(root / "hf")
    export_onnx(root / "hf", root / "onnx", optimize="none")
    return root


def _lm_head(model: onnx.ModelProto):
    producer = {o: n for n in model.graph.node for o in n.output}
    return producer["logits"] if producer["logits"].op_type != "Add" else None


def test_the_export_ties_through_a_transpose_and_untie_gives_it_a_weight(tied_onnx):
    model = onnx.load(str(tied_onnx / "onnx" / "model.onnx"))
    head = _lm_head(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    assert head.op_type == "MatMul" and producer[head.input[1]].op_type == "Transpose"
    assert untie_lm_head(model) == 1
    weights = {t.name: t for t in model.graph.initializer}
    assert head.input[1] in weights and list(weights[head.input[1]].dims) == [64, 256]
    assert not any(
        n.op_type == "Transpose" and n.input[0] in weights and len(weights[n.input[0]].dims) == 2
        for n in model.graph.node
    )


@pytest.mark.parametrize(
    "scheme,head_op,table_op",
    [
        ("ort_int8_dynamic", "MatMulInteger", "Gather"),
        ("ort_int4", "MatMulNBits", "GatherBlockQuantized"),
        ("ort_int8_weight", "MatMulNBits", "Gather"),
    ],
)
def test_quantized_lm_head_and_embedding(tied_onnx, tmp_path, scheme, head_op, table_op):
    quantize_onnx(tied_onnx / "onnx", tmp_path, scheme, block_size=16)
    for f in (tied_onnx / "onnx").glob("*.json"):
        (tmp_path / f.name).write_text(f.read_text())
    model = onnx.load(str(tmp_path / "model.onnx"))
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2]
    assert not [t.name for t in floats if sorted(t.dims) == [64, 256]]  # no fp32 copy of the 256 x 64 table is left
    producer = {o: n for n in model.graph.node for o in n.output}
    ops = {n.op_type for n in model.graph.node}
    assert head_op in ops and table_op in ops
    assert not any(
        n.op_type == "Transpose"
        and n.output[0] in {x for m in model.graph.node for x in m.input}
        and producer.get(n.input[0]) is None
        and "embed" in n.input[0]
        for n in model.graph.node
    )
    fp32 = load_generator(tied_onnx / "onnx", threads=1)
    quant = load_generator(tmp_path, threads=1)
    a, _ = fp32.prefill(PROMPTS)
    b, _ = quant.prefill(PROMPTS)
    assert (a.argmax(-1) == b.argmax(-1)).all()
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()
