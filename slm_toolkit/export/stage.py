"""The `export` stage: a Hugging Face folder to ONNX (or a TensorRT engine), checked and measured.

setup    the input must be a Hugging Face folder; eval prompts tokenized for the parity gate
export   optimum-onnx: one merged decoder with KV cache (model.onnx) + config + tokenizer;
         for tensorrt, that ONNX (kept in onnx/) is built into model.engine
check    parity gate against PyTorch on the eval prompts: max |logit difference| at prefill and
         every decode step (both fed the same tokens), and greedy-token agreement; the stage
         fails when either misses the config's tolerance (the figures are in the error)
measure  bytes on disk; batch-1 decode latency of the export vs PyTorch
save     slm_meta.json with the metrics; a section for the run report
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from slm_toolkit.core.artifacts import Kind, artifact_kind, write_meta
from slm_toolkit.data.segments import prompt_ids
from slm_toolkit.export.config import ExportConfig, output_kind
from slm_toolkit.export.tensorrt import ENGINE_FILE, build_engine
from slm_toolkit.measures.latency import interleaved_latency
from slm_toolkit.measures.metrics import bytes_on_disk
from slm_toolkit.measures.parity import parity
from slm_toolkit.models.load import load_tokenizer
from slm_toolkit.models.onnx_export import copy_tokenizer, export_onnx
from slm_toolkit.runtime.loader import load_generator
from slm_toolkit.stage import StageInput, StageOutput

LATENCY_NEW_TOKENS = 32
LATENCY_REPEATS = 3


class ExportParityError(RuntimeError):
    """The exported model does not compute what the PyTorch model computes."""


def run(cfg: ExportConfig, inp: StageInput) -> StageOutput:

    # setup
    src, dst = Path(inp.artifact), Path(inp.workdir)
    kind = output_kind(cfg, artifact_kind(src))
    tokenizer = load_tokenizer(src)
    prompts = [prompt_ids(tokenizer, ex.prompt) for ex in list(inp.data.eval)[: cfg.parity.prompts]]
    if not prompts:
        raise ValueError("export needs eval examples for its parity gate (data.eval is empty)")

    # export
    t0 = time.perf_counter()
    export_model(cfg, src, dst, inp.device, prompts)
    export_s = time.perf_counter() - t0

    # check + measure
    t1 = time.perf_counter()
    reference, exported = open_pair(src, dst, kind, inp.device, inp.threads)
    metrics = parity(reference, exported, prompts, cfg.parity.new_tokens)
    gate(metrics, cfg.parity.atol, cfg.parity.min_token_agreement)
    metrics.update(measure(reference, exported, prompts[0], dst))
    check_s = time.perf_counter() - t1

    # save
    write_meta(
        dst, kind=kind, stage="export", parent=str(src), format=cfg.format, config=cfg.model_dump(), metrics=metrics
    )
    return StageOutput(
        artifact=dst,
        metrics=metrics,
        timings={"export_s": export_s, "check_s": check_s},
        extra={"report_md": report_md(cfg, metrics)},
    )


def export_model(cfg: ExportConfig, src: Path, dst: Path, device: str, prompts: list[list[int]]) -> None:

    if cfg.format == "onnx":
        export_onnx(src, dst, opset=cfg.opset, optimize=cfg.optimize)
        return
    import shutil

    from transformers import AutoConfig

    onnx_dir = dst / "onnx"
    onnx_path = export_onnx(src, onnx_dir, opset=cfg.opset, optimize="none")
    config = AutoConfig.from_pretrained(src)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    p = cfg.profiles
    build_engine(
        onnx_path,
        dst / ENGINE_FILE,
        cfg.precision or "fp16",
        (p.batch.min, p.batch.opt, p.batch.max),
        (p.seq.min, p.seq.opt, p.seq.max),
        head_dim=head_dim,
        calibration=prompts,
    )
    for name in ("config.json", "generation_config.json"):
        if (onnx_dir / name).exists():
            shutil.copy2(onnx_dir / name, dst / name)
    copy_tokenizer(src, dst)


def open_pair(src: Path, dst: Path, kind: Kind, device: str, threads: int | None = None) -> tuple[Any, Any]:
    """(PyTorch reference, exported model) as Generators."""
    import torch

    from slm_toolkit.runtime.torch import TorchGenerator

    reference = TorchGenerator.from_folder(src, device=device, dtype=torch.float32)  # what optimum exports
    ort_device = "cpu"  # the CPU onnxruntime is what is installed; onnxruntime-gpu users get CUDA below
    if kind == Kind.ONNX and device.startswith("cuda"):
        import onnxruntime as ort

        ort_device = device if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    exported = load_generator(dst, device=device if kind == Kind.TENSORRT else ort_device, threads=threads)
    return reference, exported


def gate(metrics: dict[str, float], atol: float, min_agreement: float) -> None:
    diff, agreement = metrics["parity_max_abs_logit_diff"], metrics["parity_token_agreement"]
    if diff > atol or agreement < min_agreement:
        raise ExportParityError(
            f"export parity gate failed: max |logit diff| {diff:.3g} (allowed {atol:g}), greedy tokens agree on "
            f"{agreement:.0%} of {int(metrics['parity_prompts'])} prompts (required {min_agreement:.0%}); "
            "the exported model does not compute what the PyTorch model does"
        )


def measure(reference: Any, exported: Any, prompt: list[int], folder: Path) -> dict[str, float]:

    speed = interleaved_latency({"ref": reference, "exp": exported}, prompt, LATENCY_NEW_TOKENS, LATENCY_REPEATS)
    ref, exp = speed["ref"], speed["exp"]
    return {
        "bytes": float(bytes_on_disk(folder)),
        "latency_ms_median": exp["latency_ms_median"],
        "input_latency_ms_median": ref["latency_ms_median"],
        "tok_s": exp["tok_s"],
        "speedup_vs_torch": ref["latency_ms_median"] / exp["latency_ms_median"],
    }


def report_md(cfg: ExportConfig, m: dict[str, float]) -> str:
    target = cfg.format if cfg.format == "onnx" else f"tensorrt ({cfg.precision})"
    return (
        "\n".join(
            [
                f"### export: {target}",
                "",
                "| check | value |",
                "|---|---|",
                f"| max \\|logit diff\\| vs PyTorch | {m['parity_max_abs_logit_diff']:.2e} (allowed {cfg.parity.atol:g}) |",
                f"| greedy tokens agree | {m['parity_token_agreement']:.0%} of {int(m['parity_prompts'])} prompts × "
                f"{int(m['parity_new_tokens'])} tokens |",
                f"| bytes on disk | {m['bytes'] / 1e6:.2f} MB |",
                f"| batch-1 decode, {LATENCY_NEW_TOKENS} tokens | {m['latency_ms_median']:.1f} ms "
                f"(PyTorch {m['input_latency_ms_median']:.1f} ms, ×{m['speedup_vs_torch']:.2f} faster) |",
            ]
        )
        + "\n"
    )
