"""The fast ONNX Runtime path: optimum's decoder graph rewritten around GroupQueryAttention.

optimum's export spells attention out in ~90 small ops per layer (rotary embedding, causal mask,
repeat-kv, softmax, cache concat); at batch 1 on a CPU those cost as much as the int4 matmuls.
ONNX Runtime's `com.microsoft.GroupQueryAttention` (what onnxruntime-genai's model builder
emits) does rotary + cache append + attention in one kernel. This module rewrites the graph in
memory when it loads (model.onnx on disk stays optimum's, so quantized variants of it work too):

    q/k/v projections (whatever they are: MatMul, MatMulInteger, MatMulNBits, QDQ) -> kept
    everything between them and o_proj, and the cache concat          -> one GroupQueryAttention
    lm_head input                                                      -> gathered at given positions

GroupQueryAttention keeps each row's tokens at the start of its cache (right padding), so this
generator tracks per-row lengths instead of a left-padded mask. Only plain-RoPE Llama-style
models are rewritten (`fusable`); anything else uses onnxruntime.py's OrtGenerator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slm_toolkit.runtime.base import GenerationConfig, set_special_tokens
from slm_toolkit.runtime.decoding import candidate_logprobs, generate
from slm_toolkit.runtime.ort_common import as_numpy, lm_head_input

LOGITS_INDEX = "slm_logits_index"
_FUSABLE_TYPES = {"llama", "qwen2"}


def fusable(config: dict) -> str | None:
    """None when the graph can be rewritten, else why not."""
    if config.get("model_type") not in _FUSABLE_TYPES:
        return f"model_type {config.get('model_type')!r} is not one of {sorted(_FUSABLE_TYPES)}"
    if config.get("rope_scaling"):
        return "rope_scaling is not plain RoPE"
    if config.get("use_sliding_window") or (config.get("model_type") == "llama" and config.get("sliding_window")):
        return "sliding-window attention"
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        return "partial rotary"
    heads = config.get("num_attention_heads") or 1
    head_dim = config.get("head_dim") or config.get("hidden_size", 0) // heads
    if head_dim % 16:
        return f"head_dim {head_dim} is not a multiple of 16 (GroupQueryAttention's requirement)"
    return None


def _rope_cache(config: dict, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    theta = float(config.get("rope_theta", 10000.0))
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    freqs = np.outer(np.arange(int(config.get("max_position_embeddings", 2048))), inv)
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


def _group_edges(nodes, prefix: str, producer: dict) -> tuple[set[str], set[str]]:
    """(tensors entering, tensors leaving) the group of nodes whose name starts with prefix."""
    group = [n for n in nodes if n.name.startswith(prefix)]
    made = {o for n in group for o in n.output}
    entering = {x for n in group for x in n.input if x and x not in made and x in producer}
    used_outside = {x for n in nodes if not n.name.startswith(prefix) for x in n.input}
    return entering, {o for o in made if o in used_outside}


def fused_graph(model_path: Path, config: dict, pack: bool = True) -> bytes | None:
    """The rewritten graph (serialized), or None when its layers do not look like Llama's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_path))
    g = model.graph
    heads, kv_heads = (
        int(config["num_attention_heads"]),
        int(config.get("num_key_value_heads") or config["num_attention_heads"]),
    )
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    producer = {o: n for n in g.node for o in n.output}
    weights = {i.name for i in g.initializer}
    layers = sum(1 for i in g.input if i.name.startswith("past_key_values.") and i.name.endswith(".key"))
    cos, sin = _rope_cache(config, head_dim)
    g.initializer.extend([numpy_helper.from_array(cos, "slm_cos"), numpy_helper.from_array(sin, "slm_sin")])
    new_nodes, replaced = _length_nodes(helper), set()
    for i in range(layers):
        p = f"/model/layers.{i}/self_attn/"
        outs = [_group_edges(g.node, p + f"{n}_proj/", producer)[1] for n in "qkv"]
        entering, _ = _group_edges(g.node, p + "o_proj/", producer)
        # a dynamic quantizer feeds o_proj 3 tensors from one node; static QDQ adds the weight's
        # DequantizeLinear (of a constant), which is not the attention output
        sources = {id(producer[x]): x for x in entering if not _is_constant_dq(producer[x], weights)}
        if any(len(o) != 1 for o in outs) or len(sources) != 1:
            return None
        attn = sources.popitem()[1]
        while producer[attn].op_type in ("DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear"):
            attn = producer[attn].input[0]
        present = [f"present.{i}.key", f"present.{i}.value"]
        replaced.update([attn, *present])
        qkv = [o.pop() for o in outs]
        packed = _pack_qkv(g, [producer[t] for t in qkv], f"{p}qkv_proj/MatMul") if pack else None
        if packed is not None:  # one matmul instead of three; GroupQueryAttention takes packed QKV
            new_nodes.append(packed)
            qkv = [packed.output[0], "", ""]
        new_nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [
                    *qkv,
                    f"past_key_values.{i}.key",
                    f"past_key_values.{i}.value",
                    "slm_seqlens_k",
                    "slm_total_len",
                    "slm_cos",
                    "slm_sin",
                ],
                [attn, *present],
                domain="com.microsoft",
                num_heads=heads,
                kv_num_heads=kv_heads,
                do_rotary=1,
                rotary_interleaved=0,
                name=f"{p}GroupQueryAttention",
            )
        )
        if pack:
            _pack_mlp(g, producer, f"/model/layers.{i}/mlp/", new_nodes, replaced)
    if layers == 0 or not _gather_logits(g, producer, helper, TensorProto):
        return None
    keep = [n for n in g.node if not replaced.intersection(n.output)]
    del g.node[:]
    g.node.extend(keep + new_nodes)
    order = _toposort(g)
    del g.node[:]
    g.node.extend(order)
    _drop_dead(g)  # one backward pass suffices over a topological order
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model.SerializeToString()


def _is_constant_dq(node, initializers: set[str]) -> bool:
    return node.op_type == "DequantizeLinear" and node.input[0] in initializers


def _pack_qkv(g, nodes: list, name: str):
    """One node computing [q | k | v] when q/k/v are single MatMul or MatMulNBits nodes on the
    same input with constant weights (int8 QOperator/QDQ have per-matrix scales: not packed)."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in g.initializer}
    op = nodes[0].op_type
    if op not in ("MatMul", "MatMulNBits") or any(n.op_type != op or n.input[0] != nodes[0].input[0] for n in nodes):
        return None
    if op == "MatMul":
        if not all(n.input[1] in inits for n in nodes):
            return None
        w = np.concatenate([numpy_helper.to_array(inits[n.input[1]]) for n in nodes], axis=1)
        g.initializer.append(numpy_helper.from_array(w, name + ".weight"))
        return helper.make_node("MatMul", [nodes[0].input[0], name + ".weight"], [name + "_output_0"], name=name)
    attrs = [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    same = {k: v for k, v in attrs[0].items() if k != "N"}
    if any(len(n.input) != 3 or {k: v for k, v in a.items() if k != "N"} != same for n, a in zip(nodes, attrs)):
        return None  # zero points, g_idx or bias: keep the three nodes
    if not all(x in inits for n in nodes for x in n.input[1:]):
        return None
    blobs = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
    scales = [numpy_helper.to_array(inits[n.input[2]]) for n in nodes]
    packed_scales = np.concatenate([sc.reshape(b.shape[0], -1) for sc, b in zip(scales, blobs)])
    g.initializer.extend(
        [
            numpy_helper.from_array(np.concatenate(blobs), name + ".B"),
            numpy_helper.from_array(
                packed_scales.reshape((-1,) if scales[0].ndim == 1 else (packed_scales.shape[0], -1)), name + ".scales"
            ),
        ]
    )
    return helper.make_node(
        "MatMulNBits",
        [nodes[0].input[0], name + ".B", name + ".scales"],
        [name + "_output_0"],
        name=name,
        domain="com.microsoft",
        **same,
        N=sum(a["N"] for a in attrs),
    )


def _pack_mlp(g, producer: dict, prefix: str, new_nodes: list, replaced: set) -> None:
    """gate and up projections as one matmul + Split (same output names, so readers are unchanged)."""
    from onnx import helper, numpy_helper

    outs = [_group_edges(g.node, prefix + f"{n}_proj/", producer)[1] for n in ("gate", "up")]
    if any(len(o) != 1 for o in outs):
        return
    names = [o.pop() for o in outs]
    packed = _pack_qkv(g, [producer[t] for t in names], prefix + "gate_up_proj/MatMul")
    if packed is None:
        return
    width = [_out_features(g, producer[t]) for t in names]
    g.initializer.append(numpy_helper.from_array(np.array(width, dtype=np.int64), prefix + "gate_up_split"))
    replaced.update(names)
    new_nodes += [packed, helper.make_node("Split", [packed.output[0], prefix + "gate_up_split"], names, axis=-1)]


def _out_features(g, node) -> int:
    from onnx import helper, numpy_helper

    if node.op_type == "MatMulNBits":
        return int(next(helper.get_attribute_value(a) for a in node.attribute if a.name == "N"))
    weight = next(i for i in g.initializer if i.name == node.input[1])
    return int(numpy_helper.to_array(weight).shape[1])


def _length_nodes(helper) -> list:
    """seqlens_k = attention_mask.sum(1) - 1 (int32); total_len = mask width (int32 scalar)."""
    from onnx import TensorProto

    return [
        helper.make_node("ReduceSum", ["attention_mask", "slm_axis1"], ["slm_len64"], keepdims=0),
        helper.make_node("Sub", ["slm_len64", "slm_one"], ["slm_len_m1"]),
        helper.make_node("Cast", ["slm_len_m1"], ["slm_seqlens_k"], to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], ["slm_mask_shape"]),
        helper.make_node("Gather", ["slm_mask_shape", "slm_scalar1"], ["slm_total64"], axis=0),
        helper.make_node("Cast", ["slm_total64"], ["slm_total_len"], to=TensorProto.INT32),
        helper.make_node("Constant", [], ["slm_axis1"], value_ints=[1]),
        helper.make_node("Constant", [], ["slm_one"], value_int=1),
        helper.make_node("Constant", [], ["slm_scalar1"], value_int=1),
    ]


def _gather_logits(g, producer, helper, TensorProto) -> bool:
    """lm_head input gathered at `slm_logits_index` [B, K] positions (right padding: per row)."""
    hidden = lm_head_input(g, producer)
    if hidden is None:
        return False
    picked = hidden + ".slm_picked"
    for node in g.node:
        for k, x in enumerate(node.input):
            if x == hidden:
                node.input[k] = picked
    g.node.extend(
        [
            helper.make_node("Unsqueeze", [LOGITS_INDEX, "slm_axis2"], ["slm_idx3"]),
            helper.make_node("Shape", [hidden], ["slm_hshape"]),
            helper.make_node("Slice", ["slm_hshape", "slm_two", "slm_three"], ["slm_hdim"]),
            helper.make_node("Shape", [LOGITS_INDEX], ["slm_ishape"]),
            helper.make_node("Concat", ["slm_ishape", "slm_hdim"], ["slm_eshape"], axis=0),
            helper.make_node("Expand", ["slm_idx3", "slm_eshape"], ["slm_idx_exp"]),
            helper.make_node("GatherElements", [hidden, "slm_idx_exp"], [picked], axis=1),
            helper.make_node("Constant", [], ["slm_axis2"], value_ints=[2]),
            helper.make_node("Constant", [], ["slm_two"], value_ints=[2]),
            helper.make_node("Constant", [], ["slm_three"], value_ints=[3]),
        ]
    )
    g.input.append(helper.make_tensor_value_info(LOGITS_INDEX, TensorProto.INT64, ["batch_size", "logits_length"]))
    for out in g.output:
        if out.name == "logits":
            out.type.tensor_type.shape.dim[1].dim_param = "logits_length"
    return True


def _drop_dead(g) -> None:
    needed = {o.name for o in g.output}
    keep = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(x for x in node.input if x)
    del g.node[:]
    g.node.extend(reversed(keep))
    used = {x for n in g.node for x in n.input}
    inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)


def _toposort(g) -> list:
    ready = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending, order = list(g.node), []
    while pending:
        rest = []
        for node in pending:
            if all(x in ready for x in node.input):
                order.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            made = {o for n in rest for o in n.output}
            missing = sorted({x for n in rest for x in n.input if x not in ready and x not in made})[:5]
            raise ValueError(f"graph rewrite left a cycle or a dangling input: {missing}")
        pending = rest
    return order


@dataclass
class FusedState:
    past: list[Any]  # OrtValues or numpy [B, kv_heads, T, head_dim]; row b valid in [:lengths[b]]
    lengths: np.ndarray  # [B] int64

    @property
    def batch_size(self) -> int:
        return int(self.lengths.shape[0])


class FusedOrtGenerator:
    """Generator over the GroupQueryAttention graph (same protocol as OrtGenerator)."""

    backend = "onnxruntime"
    capacity_step = 64  # cache buffers grow by this many positions

    def __init__(self, session: Any, config: dict, generation_config: dict | None = None, share_buffer: bool = True):
        self.session = session
        set_special_tokens(self, config, generation_config)
        self.max_length = int(config.get("max_position_embeddings") or 2048)
        inputs = {i.name: i for i in session.get_inputs()}
        self.input_names = set(inputs)
        self.past_names = sorted(
            (n for n in inputs if n.startswith("past_key_values.")),
            key=lambda n: (int(n.split(".")[1]), n.endswith("value")),
        )
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        heads = int(config["num_attention_heads"])
        self.kv_heads = int(config.get("num_key_value_heads") or heads)
        self.head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
        self.cache_dtype = np.float16 if "float16" in inputs[self.past_names[0]].type else np.float32
        self.sliced = True
        self.share_buffer = share_buffer

    def _run(self, ids: np.ndarray, lengths: np.ndarray, past: list[Any], index: np.ndarray):
        total = int(lengths.max())
        mask = (np.arange(total)[None, :] < lengths[:, None]).astype(np.int64)
        io = self.session.io_binding()
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("attention_mask", mask)
        if "position_ids" in self.input_names:  # unused by the rewritten graph, still declared
            io.bind_cpu_input("position_ids", np.zeros_like(ids))
        io.bind_cpu_input(LOGITS_INDEX, index)
        if self.share_buffer:  # the cache is one buffer per layer that GroupQueryAttention appends to in place
            import onnxruntime as ort

            past = self._room(past, total)
            io.bind_output("logits", "cpu")  # first: get_outputs() follows the binding order
            for name, out, buf in zip(self.past_names, self.present_names, past):
                value = ort.OrtValue.ortvalue_from_numpy(buf)  # wraps the numpy memory, no copy
                io.bind_ortvalue_input(name, value)
                io.bind_ortvalue_output(out, value)
            self.session.run_with_iobinding(io)
            return io.get_outputs()[0].numpy(), past
        for name, value in zip(self.past_names, past):
            (io.bind_cpu_input if isinstance(value, np.ndarray) else io.bind_ortvalue_input)(name, value)
        io.bind_output("logits", "cpu")
        for name in self.present_names:
            io.bind_output(name, "cpu")
        self.session.run_with_iobinding(io)
        outs = io.get_outputs()
        return outs[0].numpy(), list(outs[1:])

    def _room(self, past: list[Any], total: int) -> list[np.ndarray]:
        """Buffers with capacity for `total` positions (grown by copying, in steps of 64, rarely)."""
        past = [as_numpy(p) for p in past]
        if past[0].shape[2] >= total:
            return past
        step = self.capacity_step
        cap = min(max(self.max_length, total), step * ((total + 2 * step - 1) // step))
        grown = []
        for p in past:
            buf = np.zeros((p.shape[0], p.shape[1], cap, p.shape[3]), dtype=p.dtype)
            buf[:, :, : p.shape[2]] = p
            grown.append(buf)
        return grown

    def prefill(self, input_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, FusedState]:
        if any(len(r) == 0 for r in input_ids):
            raise ValueError("every prompt needs at least one token (e.g. BOS)")
        lengths = np.array([len(r) for r in input_ids], dtype=np.int64)
        ids = np.full((len(input_ids), int(lengths.max())), self.pad_token_id, dtype=np.int64)
        for i, r in enumerate(input_ids):
            ids[i, : len(r)] = r
        empty = np.zeros((len(input_ids), self.kv_heads, 0, self.head_dim), dtype=self.cache_dtype)
        logits, present = self._run(ids, lengths, [empty] * len(self.past_names), (lengths - 1)[:, None])
        return logits[:, 0].astype(np.float32, copy=False), FusedState(present, lengths)

    def decode_step(self, next_ids: Sequence[int], state: FusedState) -> tuple[np.ndarray, FusedState]:
        ids = np.asarray(next_ids, dtype=np.int64).reshape(-1, 1)
        lengths = state.lengths + 1
        logits, present = self._run(ids, lengths, state.past, np.zeros((len(ids), 1), dtype=np.int64))
        return logits[:, 0].astype(np.float32, copy=False), FusedState(present, lengths)

    def generate(self, input_ids: Sequence[Sequence[int]], config: GenerationConfig) -> list[list[int]]:
        return generate(self, input_ids, config)

    def merge(self, states: Sequence[FusedState]) -> FusedState:
        width = max(max(int(s.lengths.max()), as_numpy(s.past[0]).shape[2]) for s in states)
        past = []
        for i in range(len(self.past_names)):
            parts = [as_numpy(s.past[i]) for s in states]
            past.append(np.concatenate([np.pad(x, ((0, 0), (0, 0), (0, width - x.shape[2]), (0, 0))) for x in parts]))
        return FusedState(past, np.concatenate([s.lengths for s in states]))

    def select(self, state: FusedState, keep: Sequence[int]) -> FusedState:
        idx = np.asarray(list(keep), dtype=np.int64)
        lengths = state.lengths[idx]
        width = as_numpy(state.past[0]).shape[2] if self.share_buffer else (int(lengths.max()) if len(idx) else 0)
        return FusedState([np.ascontiguousarray(as_numpy(p)[idx][:, :, :width]) for p in state.past], lengths)

    def score(self, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]) -> list[float]:
        first, state = self.prefill([prompt_ids])
        longest, n = max((len(c) for c in candidates), default=0), len(candidates)
        if longest <= 1 or n == 0:
            return candidate_logprobs(first[0], np.zeros((n, 0, 0)), candidates)
        state = FusedState([np.repeat(as_numpy(p), n, axis=0) for p in state.past], np.repeat(state.lengths, n))
        steps = []
        for j in range(longest - 1):  # the prompt ran once; candidates advance one token per step
            tokens = [c[j] if j < len(c) - 1 else self.pad_token_id for c in candidates]
            logits, state = self.decode_step(tokens, state)
            steps.append(logits)
        return candidate_logprobs(first[0], np.stack(steps, axis=1), candidates)
