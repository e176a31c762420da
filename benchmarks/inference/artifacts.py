"""Build the benchmark's model artifacts once (cached under the work folder).

Per model: hf/ (Hugging Face folder), onnx_fp32/ (our export), onnx_int8/ (ort_int8_dynamic),
onnx_int4/ (ort_int4, MatMulNBits block 32), all through the toolkit's own stages' functions.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

MODELS = {
    # the builtin student's architecture (runtime speed does not depend on the trained weights)
    "demo_student": dict(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=256,
        vocab_size=None,
    ),
    "llama_134m": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        intermediate_size=2048,
        vocab_size=32000,
    ),
}


def hf_model(name: str, out: Path) -> Path:
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from slm_toolkit.demo.tokenizer import build_demo_tokenizer

    tok = build_demo_tokenizer()
    arch = dict(MODELS[name])
    arch["vocab_size"] = arch["vocab_size"] or len(tok)
    cfg = LlamaConfig(
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        **arch,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)  # genai's builder and optimum want tokenizer files; ids are what we time
    tmp.rename(out)
    return out


def onnx_variants(hf: Path, root: Path) -> dict[str, Path]:
    """{"fp32": folder, "int8": folder, "int4": folder} of ONNX exports of `hf`."""
    from slm_toolkit.models.onnx_export import export_onnx
    from slm_toolkit.quantize.ort import quantize_onnx

    out = {"fp32": root / "onnx_fp32", "int8": root / "onnx_int8", "int4": root / "onnx_int4"}
    if not (out["fp32"] / "model.onnx").exists():
        tmp = root / "onnx_fp32.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        export_onnx(hf, tmp, optimize="none")
        tmp.rename(out["fp32"])
    for fmt, scheme in (("int8", "ort_int8_dynamic"), ("int4", "ort_int4")):
        if (out[fmt] / "model.onnx").exists():
            continue
        tmp = root / f"onnx_{fmt}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in out["fp32"].iterdir():
            if f.suffix != ".onnx" and f.is_file():
                shutil.copy2(f, tmp / f.name)
        quantize_onnx(out["fp32"], tmp, scheme, block_size=32)
        tmp.rename(out[fmt])
    return out


def weight_bytes_per_token(model_path: Path) -> int:
    """Bytes of weights one decode step reads: every initializer except the embedding table's
    unread rows (the table feeding the Gather on input_ids counts one row)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    g = model.graph
    sizes = {i.name: numpy_helper.to_array(i).nbytes for i in g.initializer}
    shapes = {i.name: tuple(i.dims) for i in g.initializer}
    total = sum(sizes.values())
    for node in g.node:
        if node.op_type == "Gather" and node.input[1] == "input_ids" and node.input[0] in sizes:
            rows = shapes[node.input[0]][0]
            total -= sizes[node.input[0]] - sizes[node.input[0]] // rows
    return total


def bandwidth_probe(threads: int, mb: int = 512):
    """A callable measuring read bandwidth in bytes/s (best of `repeats` sums of a buffer far larger
    than the caches). The benchmark samples it once per round, interleaved with the variants, so
    the bound follows the same drift of a shared machine as the figures it is compared with."""
    import time

    import torch

    torch.set_num_threads(threads)
    x = torch.ones(mb * (1 << 20) // 4, dtype=torch.float32)
    x.sum()

    def sample(repeats: int = 3) -> float:
        torch.set_num_threads(threads)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            x.sum()
            best = min(best, time.perf_counter() - t0)
        return x.numel() * 4 / best

    return sample


def prompts(vocab: int, batch: int, length: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(6, vocab, size=(batch, length), dtype=np.int64)  # skip the special tokens
