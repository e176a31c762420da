"""The benchmark's variants: each `run(ids, new_tokens)` generates exactly `new_tokens` per row.

hf_generate_fp32   transformers' generate, eager fp32
torch_int8         torchao int8 (W8A8 dynamic) through transformers' generate
optimum_ort_fp32   optimum's ORTModelForCausalLM.generate on our ONNX export
optimum_ort_int8   ... on its int8 (ort_int8_dynamic) version
ort_genai_int4     onnxruntime-genai's model builder (int4, block 32) + its generator,
                   in its own virtual environment (genai_env.py), driven over a pipe
slm_ort_fp32/int8/int4  our onnxruntime backend on our exports
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np


class HFGenerate:
    def __init__(self, folder: Path, threads: int, int8: bool = False):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        if int8:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            quantize_(self.model, Int8DynamicActivationInt8WeightConfig())
        self.threads = threads

    def run(self, ids: np.ndarray, new_tokens: int) -> None:
        self.torch.set_num_threads(self.threads)
        t = self.torch.from_numpy(ids)
        with self.torch.inference_mode():
            self.model.generate(
                t,
                attention_mask=self.torch.ones_like(t),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )


class OptimumGenerate(HFGenerate):
    def __init__(self, folder: Path, threads: int):
        import torch
        from optimum.onnxruntime import ORTModelForCausalLM

        from slm_toolkit.runtime.onnxruntime import session_options

        self.torch, self.threads = torch, threads
        self.model = ORTModelForCausalLM.from_pretrained(
            folder, session_options=session_options(threads), provider="CPUExecutionProvider"
        )


class SlmOrt:
    def __init__(self, folder: Path, threads: int):
        from slm_toolkit.runtime.base import GenerationConfig
        from slm_toolkit.runtime.loader import load_generator

        self.gen = load_generator(folder, backend="onnxruntime", threads=threads)
        self.config = GenerationConfig

    def run(self, ids: np.ndarray, new_tokens: int) -> None:
        cfg = self.config(max_new_tokens=new_tokens, min_new_tokens=new_tokens, ignore_eos=True)
        self.gen.generate(ids.tolist(), cfg)


class GenaiWorker:
    """onnxruntime-genai in its own interpreter (it needs transformers 5); one JSON line per call."""

    def __init__(self, python: Path, folder: Path, threads: int):
        worker = Path(__file__).with_name("genai_worker.py")
        self.proc = subprocess.Popen(
            [str(python), str(worker), str(folder), str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        ready = self.proc.stdout.readline()
        if not ready.startswith("ready"):
            raise RuntimeError(f"genai worker failed to start: {ready!r}")

    def run(self, ids: np.ndarray, new_tokens: int) -> None:
        self.proc.stdin.write(json.dumps({"ids": ids.tolist(), "new_tokens": new_tokens}) + "\n")
        reply = json.loads(self.proc.stdout.readline())
        if "error" in reply:
            raise RuntimeError(reply["error"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def make(variant: str, files: dict[str, Path], threads: int, genai_python: Path | None):
    if variant == "hf_generate_fp32":
        return HFGenerate(files["hf"], threads)
    if variant == "torch_int8":
        return HFGenerate(files["hf"], threads, int8=True)
    if variant.startswith("optimum_ort_"):
        return OptimumGenerate(files["onnx_" + variant.rsplit("_", 1)[1]], threads)
    if variant.startswith("slm_ort_"):
        return SlmOrt(files["onnx_" + variant.rsplit("_", 1)[1]], threads)
    if variant == "ort_genai_int4":
        if genai_python is None or "genai_int4" not in files:
            raise RuntimeError("onnxruntime-genai environment unavailable")
        return GenaiWorker(genai_python, files["genai_int4"], threads)
    raise ValueError(f"unknown variant {variant}")
