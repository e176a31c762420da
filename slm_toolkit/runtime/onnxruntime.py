"""The ONNX Runtime backend: our own decode loop over one InferenceSession.

Loads an optimum export folder (model.onnx: merged decoder with `past_key_values.*` inputs and
`present.*` outputs) and its quantized variants (int8 QOperator/QDQ, MatMulNBits int4) alike.
Why not optimum's `ORTModelForCausalLM.generate`: on CPU it converts the whole KV cache between
numpy and torch on every step; here the cache stays in ONNX Runtime's OrtValues (IO binding)
from one step to the next, and the graph is given a `slm_logits_start` input so prefill computes
the vocabulary projection for the last position only (a 32-token prompt otherwise spends ~20%
of its time on logits nobody reads). Benchmarks: benchmarks/inference/.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slm_toolkit.runtime.base import GenerationConfig, set_special_tokens
from slm_toolkit.runtime.decoding import candidate_logprobs, generate
from slm_toolkit.runtime.ort_common import (
    as_numpy,
    execution_providers,
    lm_head_input,
    read_json,
    session_options,
)
from slm_toolkit.runtime.ort_fused import FusedOrtGenerator, fusable, fused_graph

LOGITS_START = "slm_logits_start"


@dataclass
class OrtState:
    """Decode state: the cache (OrtValues after a step, numpy after merge/select), mask, positions."""

    past: list[Any]  # one per past input, [B, kv_heads, T, head_dim]
    mask: np.ndarray  # [B, T] int64
    positions: np.ndarray  # [B] int64

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])


def last_positions_graph(model_path: Path) -> bytes | None:
    """model.onnx with a `slm_logits_start` input: logits only for positions [start:] (start < 0).

    The final hidden state (`lm_head_input`) is sliced before the projection. Returns None when
    the graph has another shape (then the full logits are used).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_path))
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    hidden = None if any(i.name == LOGITS_START for i in g.input) else lm_head_input(g, producer)
    if hidden is None:
        return None
    users = [n for n in g.node if hidden in n.input]
    sliced = hidden + ".slm_last"
    for node in users:
        for k, x in enumerate(node.input):
            if x == hidden:
                node.input[k] = sliced
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array([np.iinfo(np.int64).max]), "slm_end"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "slm_axis"),
        ]
    )
    g.node.append(helper.make_node("Slice", [hidden, LOGITS_START, "slm_end", "slm_axis"], [sliced]))
    g.input.append(helper.make_tensor_value_info(LOGITS_START, TensorProto.INT64, [1]))
    for out in g.output:
        if out.name == "logits":
            out.type.tensor_type.shape.dim[1].dim_param = "logits_length"
    try:
        return model.SerializeToString()
    except ValueError:  # over protobuf's 2 GB: keep the plain graph
        return None


class OrtGenerator:
    """Generator over an ONNX Runtime session of an optimum-layout decoder with KV cache."""

    backend = "onnxruntime"

    def __init__(self, session: Any, config: dict, generation_config: dict | None = None, sliced: bool = False):
        self.session = session
        self.sliced = sliced
        set_special_tokens(self, config, generation_config)
        self.max_length = int(config.get("max_position_embeddings") or 2048)
        inputs = {i.name: i for i in session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        if not self.past_names or "input_ids" not in inputs:
            raise ValueError(
                f"the ONNX model's inputs {sorted(inputs)} are not a decoder with KV cache: "
                "export it with task text-generation-with-past (`export: {format: onnx}`)"
            )
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        self.has_positions = "position_ids" in inputs
        first = inputs[self.past_names[0]]
        self.kv_heads = (
            first.shape[1]
            if isinstance(first.shape[1], int)
            else int(config.get("num_key_value_heads") or config["num_attention_heads"])
        )
        self.head_dim = (
            first.shape[3]
            if isinstance(first.shape[3], int)
            else int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
        )
        self.cache_dtype = np.float16 if "float16" in first.type else np.float32
        self.device = "cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu"

    @classmethod
    def from_folder(
        cls, folder: Path, device: str = "cpu", threads: int | None = None, model_file: str = "model.onnx"
    ) -> OrtGenerator:
        import onnxruntime as ort

        folder = Path(folder)
        providers = execution_providers(device)
        graph = last_positions_graph(folder / model_file)
        source = graph if graph is not None else str(folder / model_file)
        session = ort.InferenceSession(source, session_options(threads), providers=providers)
        return cls(
            session,
            read_json(folder / "config.json"),
            read_json(folder / "generation_config.json"),
            sliced=graph is not None,
        )

    # -- one forward pass ------------------------------------------------------------------
    def _run(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray, past: list[Any], keep: int):
        """Run the graph; return (logits [B, keep, V] numpy, presents as OrtValues)."""
        io = self.session.io_binding()
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("attention_mask", mask)
        if self.has_positions:
            io.bind_cpu_input("position_ids", pos)
        if self.sliced:
            io.bind_cpu_input(LOGITS_START, np.array([-keep], dtype=np.int64))
        for name, value in zip(self.past_names, past):
            if isinstance(value, np.ndarray):
                io.bind_cpu_input(name, value)
            else:
                io.bind_ortvalue_input(name, value)
        io.bind_output("logits", "cpu")
        for name in self.present_names:
            io.bind_output(name, self.device)
        self.session.run_with_iobinding(io)
        outs = io.get_outputs()
        logits = outs[0].numpy()
        return (logits if self.sliced else logits[:, -keep:]), list(outs[1:])

    def _empty_past(self, batch: int) -> list[np.ndarray]:
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.cache_dtype)
        return [empty] * len(self.past_names)

    # -- the protocol ----------------------------------------------------------------------
    def prefill(self, input_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, OrtState]:
        ids, mask = _left_pad(input_ids, self.pad_token_id)
        pos = np.maximum(mask.cumsum(-1) - 1, 0)
        logits, present = self._run(ids, mask, pos, self._empty_past(len(input_ids)), keep=1)
        return logits[:, -1].astype(np.float32, copy=False), OrtState(present, mask, mask.sum(-1))

    def decode_step(self, next_ids: Sequence[int], state: OrtState) -> tuple[np.ndarray, OrtState]:
        ids = np.asarray(next_ids, dtype=np.int64).reshape(-1, 1)
        mask = np.concatenate([state.mask, np.ones((state.batch_size, 1), dtype=np.int64)], axis=1)
        logits, present = self._run(ids, mask, state.positions.reshape(-1, 1), state.past, keep=1)
        return logits[:, -1].astype(np.float32, copy=False), OrtState(present, mask, state.positions + 1)

    def generate(self, input_ids: Sequence[Sequence[int]], config: GenerationConfig) -> list[list[int]]:
        return generate(self, input_ids, config)

    def merge(self, states: Sequence[OrtState]) -> OrtState:
        width = max(s.mask.shape[1] for s in states)
        pads = [width - s.mask.shape[1] for s in states]
        mask = np.concatenate([np.pad(s.mask, ((0, 0), (p, 0))) for s, p in zip(states, pads)])
        past = [
            np.concatenate([_lpad(as_numpy(s.past[i]), p) for s, p in zip(states, pads)])
            for i in range(len(self.past_names))
        ]
        return OrtState(past, mask, np.concatenate([s.positions for s in states]))

    def select(self, state: OrtState, keep: Sequence[int]) -> OrtState:
        idx = np.asarray(list(keep), dtype=np.int64)
        mask = state.mask[idx]
        first = int(np.argmax(mask.sum(0) > 0)) if mask.size else 0  # drop all-padding columns
        past = [np.ascontiguousarray(as_numpy(p)[idx][:, :, first:]) for p in state.past]
        return OrtState(past, np.ascontiguousarray(mask[:, first:]), state.positions[idx])

    def score(self, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]) -> list[float]:
        first_logits, state = self.prefill([prompt_ids])
        longest = max((len(c) for c in candidates), default=0)
        if longest <= 1:
            return candidate_logprobs(first_logits[0], np.zeros((len(candidates), 0, 0)), candidates)
        n, width = len(candidates), longest - 1
        ids = np.full((n, width), self.pad_token_id, dtype=np.int64)
        cmask = np.zeros((n, width), dtype=np.int64)
        for i, c in enumerate(candidates):  # right padding: pads follow the tokens they cannot affect
            feed = list(c[:-1])  # a candidate's last token predicts nothing we need
            ids[i, : len(feed)] = feed
            cmask[i, : len(feed)] = 1
        past = [np.repeat(as_numpy(p), n, axis=0) for p in state.past]  # the prompt, computed once
        mask = np.concatenate([np.repeat(state.mask, n, axis=0), cmask], axis=1)
        pos = np.broadcast_to(state.positions.reshape(1, 1) + np.arange(width), (n, width)).copy()
        logits, _ = self._run(ids, mask, pos, past, keep=width)
        return candidate_logprobs(first_logits[0], logits, candidates)


def load_onnx_generator(
    folder: Path, device: str = "cpu", threads: int | None = None, fused: bool | None = None
) -> Any:
    """The fastest generator for an ONNX folder: the GroupQueryAttention rewrite (ort_fused.py)
    on CPU when the model allows it (fused=None: when possible), else OrtGenerator."""
    import onnxruntime as ort

    folder = Path(folder)
    providers = execution_providers(device)
    config = read_json(folder / "config.json")
    if fused is not False and device == "cpu" and fusable(config) is None:
        graph = fused_graph(folder / "model.onnx", config)
        try:
            if graph is not None:
                session = ort.InferenceSession(graph, session_options(threads), providers=providers)
                gen = FusedOrtGenerator(session, config, read_json(folder / "generation_config.json"))
                gen.prefill([[gen.pad_token_id] * 2])  # fail here, not in the middle of a request
                return gen
        except Exception as exc:  # an unforeseen graph shape: the plain graph always works
            if fused:
                raise
            logging.getLogger(__name__).warning("fused ONNX graph unusable (%s); using the plain graph", exc)
    if fused:
        raise ValueError(f"{folder} cannot use the fused graph: {fusable(config) or 'its layers do not match'}")
    return OrtGenerator.from_folder(folder, device=device, threads=threads)


def open_onnx(folder: Path, device: str = "cpu", threads: int | None = None, trust_remote_code: bool = False) -> Any:
    """The onnxruntime backend's factory (runtime/backends.py); an ONNX folder runs no remote code."""
    return load_onnx_generator(folder, device=device, threads=threads)


def _lpad(t: np.ndarray, pad: int) -> np.ndarray:
    return np.pad(t, ((0, 0), (0, 0), (pad, 0), (0, 0))) if pad else t


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    if any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return ids, mask
