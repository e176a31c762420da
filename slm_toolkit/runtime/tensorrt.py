"""The TensorRT backend: an engine built by export/tensorrt.py behind the Generator protocol.

The engine has two optimization profiles (0: prefill with an empty cache, 1: one-token decode);
the KV cache is a list of CUDA tensors (torch) that stays on the GPU between steps. TensorRT and
a CUDA GPU are needed; where either is missing, `from_folder` raises BackendUnavailable naming it.
`score` feeds the candidates token by token through the decode profile (the prompt runs once).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slm_toolkit.core.artifacts import ENGINE_FILE
from slm_toolkit.core.errors import BackendUnavailable
from slm_toolkit.runtime.base import GenerationConfig, set_special_tokens
from slm_toolkit.runtime.decoding import candidate_logprobs, generate

PREFILL, DECODE = 0, 1


def tensorrt_missing() -> str | None:
    """What is missing for the TensorRT backend here (None when nothing is)."""
    import importlib.util

    missing = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("the tensorrt package (pip install tensorrt from NVIDIA's package index)")
    import torch

    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (PyTorch sees none)")
    if not missing:
        return None
    return "the TensorRT backend needs " + " and ".join(missing) + "; use an ONNX export with the onnxruntime backend"


@dataclass
class TrtState:
    past: list[Any]  # torch CUDA tensors [B, kv_heads, T, head_dim]
    mask: Any  # torch [B, T] int64 on the GPU
    positions: Any  # torch [B] int64 on the GPU

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])


class TensorRTGenerator:
    backend = "tensorrt"

    def __init__(self, engine: Any, config: dict, generation_config: dict | None = None):
        import tensorrt as trt
        import torch

        self.trt, self.torch = trt, torch
        self.engine = engine
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self._profile = -1
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values.")]
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        set_special_tokens(self, config, generation_config)
        lo, _, hi = engine.get_tensor_profile_shape(self.past_names[0], DECODE)
        self.max_batch, self.max_length = int(hi[0]), int(hi[2]) + 1
        self.kv_heads, self.head_dim = int(hi[1]), int(hi[3])
        self.cache_dtype = self._dtype(self.past_names[0])

    @classmethod
    def from_folder(cls, folder: Path, device: str = "cuda") -> TensorRTGenerator:
        problem = tensorrt_missing()
        if problem:
            raise BackendUnavailable(problem)
        if device == "cpu":
            raise BackendUnavailable("a TensorRT engine runs on a CUDA GPU: use device='cuda'")
        import tensorrt as trt

        folder = Path(folder)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine((folder / ENGINE_FILE).read_bytes())
        if engine is None:
            raise BackendUnavailable(
                f"TensorRT could not load {folder / ENGINE_FILE} (built by another TensorRT "
                "version or for another GPU? rebuild it with the export stage here)"
            )
        read = lambda name: json.loads((folder / name).read_text()) if (folder / name).exists() else {}  # noqa: E731
        return cls(engine, read("config.json"), read("generation_config.json"))

    # -- one engine call ---------------------------------------------------------------------
    def _dtype(self, name: str) -> Any:
        return self.torch.from_numpy(np.empty(0, dtype=self.trt.nptype(self.engine.get_tensor_dtype(name)))).dtype

    def _run(self, profile: int, feeds: dict[str, Any]) -> dict[str, Any]:
        torch, ctx = self.torch, self.context
        batch = int(feeds["input_ids"].shape[0])
        if batch > self.max_batch:
            raise ValueError(
                f"batch {batch} exceeds the engine's profile (max {self.max_batch}): rebuild it "
                "with a larger `profiles.batch` max"
            )
        if profile != self._profile:
            ctx.set_optimization_profile_async(profile, self.stream.cuda_stream)
            self._profile = profile
        keep = []
        for name in self.inputs:
            t = feeds[name].contiguous()
            keep.append(t if t.numel() else torch.empty(1, dtype=t.dtype, device=t.device))  # TensorRT wants a pointer
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, keep[-1].data_ptr())
        outs = {}
        for name in self.outputs:
            outs[name] = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=self._dtype(name), device="cuda")
            ctx.set_tensor_address(name, outs[name].data_ptr())
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed (see the TensorRT log)")
        self.stream.synchronize()
        return outs

    def _feeds(self, ids: Any, mask: Any, pos: Any, past: list[Any]) -> dict[str, Any]:
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, **dict(zip(self.past_names, past))}
        return {k: v for k, v in feeds.items() if k in self.inputs}

    # -- the protocol ----------------------------------------------------------------------
    def prefill(self, input_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, TrtState]:
        from slm_toolkit.runtime.torch import left_pad, position_ids

        ids, mask = (t.cuda() for t in left_pad(input_ids, self.pad_token_id))
        empty = self.torch.zeros((ids.shape[0], self.kv_heads, 0, self.head_dim), dtype=self.cache_dtype, device="cuda")
        outs = self._run(PREFILL, self._feeds(ids, mask, position_ids(mask), [empty] * len(self.past_names)))
        state = TrtState([outs[n] for n in self.present_names], mask, mask.sum(-1))
        return outs["logits"][:, -1].float().cpu().numpy(), state

    def decode_step(self, next_ids: Sequence[int], state: TrtState) -> tuple[np.ndarray, TrtState]:
        torch = self.torch
        ids = torch.as_tensor(list(next_ids), dtype=torch.long, device="cuda").view(-1, 1)
        mask = torch.cat([state.mask, torch.ones_like(state.mask[:, :1])], dim=1)
        outs = self._run(DECODE, self._feeds(ids, mask, state.positions.view(-1, 1), state.past))
        new = TrtState([outs[n] for n in self.present_names], mask, state.positions + 1)
        return outs["logits"][:, -1].float().cpu().numpy(), new

    def generate(self, input_ids: Sequence[Sequence[int]], config: GenerationConfig) -> list[list[int]]:
        return generate(self, input_ids, config)

    def merge(self, states: Sequence[TrtState]) -> TrtState:
        from slm_toolkit.runtime.torch import _lpad

        torch = self.torch
        width = max(int(s.mask.shape[1]) for s in states)
        pads = [width - int(s.mask.shape[1]) for s in states]
        mask = torch.cat([torch.nn.functional.pad(s.mask, (p, 0)) for s, p in zip(states, pads)])
        past = [torch.cat([_lpad(s.past[i], p) for s, p in zip(states, pads)]) for i in range(len(self.past_names))]
        return TrtState(past, mask, torch.cat([s.positions for s in states]))

    def select(self, state: TrtState, keep: Sequence[int]) -> TrtState:
        idx = self.torch.as_tensor(list(keep), dtype=self.torch.long, device="cuda")
        mask = state.mask[idx]
        first = int((mask.sum(0) > 0).nonzero()[0]) if mask.numel() else 0
        return TrtState([p[idx][:, :, first:] for p in state.past], mask[:, first:], state.positions[idx])

    def score(self, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]) -> list[float]:
        first, state = self.prefill([prompt_ids])
        longest = max((len(c) for c in candidates), default=0)
        n = len(candidates)
        if longest <= 1 or n == 0:
            return candidate_logprobs(first[0], np.zeros((n, 0, 0)), candidates)
        state = self.merge([state] * n)  # the prompt's cache, shared by every candidate
        steps = []
        for j in range(longest - 1):  # padded rows feed the pad id; their logits are never read
            tokens = [c[j] if j < len(c) - 1 else self.pad_token_id for c in candidates]
            logits, state = self.decode_step(tokens, state)
            steps.append(logits)
        return candidate_logprobs(first[0], np.stack(steps, axis=1), candidates)


def open_tensorrt(
    folder: Path, device: str = "cuda", threads: int | None = None, trust_remote_code: bool = False
) -> TensorRTGenerator:
    """The tensorrt backend's factory (runtime/backends.py); an engine runs on the GPU (no CPU threads)."""
    return TensorRTGenerator.from_folder(folder, device=device)
