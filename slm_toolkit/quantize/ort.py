"""ONNX Runtime quantization of an exported ONNX folder (optimum's merged decoder with KV cache).

- ort_int8_dynamic: `quantize_dynamic`, int8 weights, activations quantized per call (QOperator).
- ort_int8_static: `quantize_static`, QDQ format, activation ranges calibrated on the recipe's
  prompts (a CalibrationDataReader feeding the merged decoder its first step: empty KV cache).
- ort_int4: weight-only 4-bit `MatMulNBits` through onnxruntime's `MatMulNBitsQuantizer`
  (blocked, symmetric, block size configurable).
- ort_int8_weight: the same kernel with 8-bit weights: activations stay float between layers
  (no per-call activation quantization as in ort_int8_dynamic), so its error is the weights' alone.

Only MatMuls with a constant weight are quantized (the linear layers, `weight_matmuls`);
norms and the activation-by-activation MatMuls stay float. That matters: the rotary
embedding's `positions x inv_freq` MatMul, calibrated on short prompts, clips every later position
and static QDQ then loses all accuracy (measured: 0.98 -> 0.00 on the demo teacher).

Tied embeddings: optimum exports a tied lm_head as `MatMul(hidden, Transpose(embed_tokens))`,
whose weight is no initializer, so the quantizers left it in fp32: on SmolLM2-135M (49152 x 576)
that one fp32 MatMul read 113 MB per decoded token, twice the bytes of all the int4 layers.
`untie_lm_head` gives it its own constant (transposed) weight first, so it is quantized like
every other linear layer, and ort_int8_dynamic / ort_int4 also quantize the embedding table's
Gather (int8 Gather; int4 `GatherBlockQuantized`). Measured on SmolLM2-135M (1 thread):
int8 211 -> 165 MB and 38 -> 53 tok/s; int4 181 -> 103 MB and 43 -> 52 tok/s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODEL_FILE = "model.onnx"
# Protobuf caps a single .onnx file at 2 GB: above this, weights go to an external data file.
_EXTERNAL_DATA_BYTES = 1_800_000_000
# MatMulNBits accuracy_level 4 = int8 activations inside the kernel (4- and 8-bit): the fast CPU path
# (onnxruntime-genai's model builder uses the same for CPU int4).
NBITS_ACCURACY_LEVEL = 4


def quantize_onnx(
    src: Path,
    dst: Path,
    scheme: str,
    block_size: int = 32,
    calibration_prompts: Sequence[Sequence[int]] = (),
) -> Path:
    """Quantize `src/model.onnx` into `dst/model.onnx`; return the written file."""
    model_in, model_out = Path(src) / MODEL_FILE, Path(dst) / MODEL_FILE
    if not model_in.is_file():
        raise FileNotFoundError(
            f"{src} has no {MODEL_FILE}: {scheme} needs an ONNX export (`export: {{format: onnx}}`)"
        )
    model_out.parent.mkdir(parents=True, exist_ok=True)
    steps = {  # a scheme's onnxruntime settings live in its function below
        "ort_int8_dynamic": lambda external: _dynamic(model_in, model_out, external),
        "ort_int8_static": lambda external: _static(model_in, model_out, calibration_prompts, external),
        "ort_int4": lambda external: _nbits(model_in, model_out, 4, block_size, external),
        "ort_int8_weight": lambda external: _nbits(model_in, model_out, 8, block_size, external),
    }
    if scheme not in steps:
        raise ValueError(f"{scheme!r} is not an ONNX Runtime scheme; choose one of {', '.join(steps)}")
    if scheme == "ort_int8_static" and not calibration_prompts:
        raise ValueError("ort_int8_static needs calibration prompts (the recipe's data gave none)")
    steps[scheme](_needs_external_data(Path(src)))
    return model_out


def _needs_external_data(src: Path) -> bool:
    total = sum(p.stat().st_size for p in src.iterdir() if p.name.startswith(MODEL_FILE))
    return total > _EXTERNAL_DATA_BYTES


def _dynamic(model_in: Path, model_out: Path, external: bool) -> None:
    import onnx

    model = onnx.load(str(model_in))
    untie_lm_head(model)
    _int8_weights(model, model_out, weight_matmuls(model) + embedding_gathers(model), ["MatMul", "Gather"], external)


def _int8_weights(model: Any, model_out: Path, nodes: list[str], op_types: list[str], external: bool) -> None:
    """`quantize_dynamic` of `nodes` (of `op_types`) to int8 weights with per-channel scales."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        model,
        str(model_out),
        nodes_to_quantize=nodes,
        op_types_to_quantize=op_types,
        per_channel=True,  # SmolLM2-135M GSM8K CoT perplexity: fp32 4.25, per-tensor 4.77, per-channel 4.49
        weight_type=QuantType.QInt8,
        use_external_data_format=external,
    )


def _static(model_in: Path, model_out: Path, prompts: Sequence[Sequence[int]], external: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(model_in),
        str(model_out),
        DecoderCalibrationReader(model_in, prompts),
        quant_format=QuantFormat.QDQ,
        nodes_to_quantize=weight_matmuls(model_in),
        per_channel=True,
        # U8S8 (uint8 activations with a zero point, int8 symmetric per-channel weights): the
        # combination ORT's x86 kernels are fastest at; int8 activations measured ~2x slower here
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        use_external_data_format=external,
        extra_options={"WeightSymmetric": True},
    )


def weight_matmuls(model: Path | Any) -> list[str]:
    """Names of the MatMul nodes whose second input is a constant weight (the linear layers), of
    a model file or an in-memory ModelProto."""
    import onnx

    graph = (onnx.load(str(model), load_external_data=False) if isinstance(model, (str, Path)) else model).graph
    constants = {t.name for t in graph.initializer}
    names = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in constants]
    if not names:
        raise ValueError(
            f"{model if isinstance(model, (str, Path)) else 'the model'} has no MatMul with a constant weight: nothing to quantize"
        )
    return names


def embedding_gathers(model: Any) -> list[str]:
    """Names of the Gather nodes that look rows up in a constant 2-D table (the token embedding)."""
    tables = {t.name for t in model.graph.initializer if len(t.dims) == 2}
    return [n.name for n in model.graph.node if n.op_type == "Gather" and n.input[0] in tables]


def untie_lm_head(model: Any) -> int:
    """Give each MatMul that multiplies by `Transpose(initializer)` (a tied lm_head) its own
    constant, transposed weight; drop the Transposes left unused. Returns how many changed."""
    from onnx import numpy_helper

    g = model.graph
    tables = {t.name: t for t in g.initializer if len(t.dims) == 2}
    producer = {o: n for n in g.node for o in n.output}
    made: dict[str, str] = {}
    changed = 0
    for node in g.node:
        t = producer.get(node.input[1]) if node.op_type == "MatMul" else None
        if t is None or t.op_type != "Transpose" or t.input[0] not in tables:
            continue
        perm = next((list(a.ints) for a in t.attribute if a.name == "perm"), [1, 0])
        if perm != [1, 0]:
            continue
        if t.input[0] not in made:
            made[t.input[0]] = name = t.input[0] + ".untied_T"
            g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(tables[t.input[0]]).T.copy(), name))
        node.input[1] = made[t.input[0]]
        changed += 1
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    dead = [n for n in g.node if n.op_type == "Transpose" and not any(o in used for o in n.output)]
    for n in dead:
        g.node.remove(n)
    return changed


def _nbits(model_in: Path, model_out: Path, bits: int, block_size: int, external: bool) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(model_in))
    untie_lm_head(model)
    # the embedding table: GatherBlockQuantized takes 4-bit blocks only (onnxruntime 1.22-1.23),
    # so at 8 bits it becomes an int8 Gather (per-channel, as in ort_int8_dynamic) afterwards
    table = bits == 4
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=NBITS_ACCURACY_LEVEL,
        op_types_to_quantize=("MatMul", "Gather") if table else ("MatMul",),
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    quantizer.process()
    if table:
        quantizer.model.save_model_to_file(str(model_out), use_external_data_format=external)
        return
    model = quantizer.model.model
    _int8_weights(model, model_out, embedding_gathers(model), ["Gather"], external)


class DecoderCalibrationReader:
    """Feeds tokenized prompts to the merged decoder as first steps (empty KV cache), one per call.

    Implements onnxruntime's CalibrationDataReader protocol (`get_next` returns a feed dict or None).
    Input names, KV-cache shapes (heads, head_dim) and dtypes are read from the graph, so
    head-pruned and fp16 exports work.
    """

    def __init__(self, model_path: Path, prompts: Sequence[Sequence[int]]):
        self.inputs = graph_inputs(model_path)
        self.prompts = [list(p) for p in prompts]
        self._next = 0

    def get_next(self) -> dict[str, Any] | None:
        if self._next >= len(self.prompts):
            return None
        self._next += 1
        return first_step_feeds(self.prompts[self._next - 1], self.inputs)

    def rewind(self) -> None:
        self._next = 0


def graph_inputs(model_path: Path) -> dict[str, tuple[Any, ...]]:
    """{input name: shape with symbolic dims as None} plus the numpy dtype last, from the graph."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(model_path), load_external_data=False)
    out = {}
    for inp in model.graph.input:
        t = inp.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        out[inp.name] = (*dims, tensor_dtype_to_np_dtype(t.elem_type))
    return out


def first_step_feeds(ids: Sequence[int], inputs: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    """Inputs of the merged decoder for one prompt with an empty cache (past length 0)."""
    import numpy as np

    arr = np.asarray([list(ids)], dtype=np.int64)
    feeds = {
        "input_ids": arr,
        "attention_mask": np.ones_like(arr),
        "position_ids": np.arange(arr.shape[1], dtype=np.int64)[None, :],
    }
    feeds = {k: v for k, v in feeds.items() if k in inputs}
    for name, (*dims, dtype) in inputs.items():
        if name.startswith("past_key_values"):  # [batch, kv heads, past length, head dim]
            feeds[name] = np.zeros((1, dims[1], 0, dims[3] or 1), dtype=dtype)  # any head size fits an empty cache
    missing = set(inputs) - set(feeds)
    if missing:
        raise ValueError(f"cannot calibrate: the ONNX model has inputs we do not know how to feed: {sorted(missing)}")
    return feeds
