"""The `quantize` stage: quantize the input artifact into the stage folder, then measure it.

    setup    the input artifact's kind must fit the scheme (its row in schemes.py: HF, or ONNX for ort_*)
    quantize the row's function: torchao (int8, W8A8, fp8), bitsandbytes (8-bit, NF4), onnxruntime
             (int8 dynamic, int8 static QDQ, int4 MatMulNBits); side files (tokenizer, config for
             ONNX) are copied so the folder keeps the input's layout; slm_meta.json says the kind
             (hf-quantized or onnx) and the row's format, by which the folder is reopened
    measure  the saved artifact is reopened from disk (proving it reloads) and compared with the
             input: bytes on disk, exact-match accuracy on the eval prompts, batch-1 decode latency
    save     slm_meta.json; a report line that warns when the quantized artifact decodes slower

A quantized model that is slower than its input is a known trap (int8 weight-only and
W4A16 often decode slower than fp16 in the field's issue trackers): the stage flags it,
`slower_than_input = 1.0` (beyond 5% and beyond the measured spread), rather than hiding it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from slm_toolkit.core.artifacts import artifact_kind, write_meta
from slm_toolkit.data.segments import prompt_ids
from slm_toolkit.measures.latency import interleaved_latency
from slm_toolkit.measures.metrics import bytes_on_disk, exact_match, generation_budget
from slm_toolkit.models.load import load_tokenizer
from slm_toolkit.models.quantized import FORMAT_KEY
from slm_toolkit.quantize.config import QuantizeConfig, output_kind
from slm_toolkit.quantize.schemes import SCHEMES, QuantizeJob
from slm_toolkit.runtime.loader import load_generator
from slm_toolkit.stage import StageInput, StageOutput

LATENCY_NEW_TOKENS = 32
LATENCY_REPEATS = 5
SLOWER_TOLERANCE = 0.05  # a latency ratio within 5% (or within the measured spread) is not "slower"
# Files that hold weights (rewritten by the quantizer) or describe a run (rewritten by us).
_NOT_COPIED_SUFFIXES = (".safetensors", ".onnx", ".onnx_data", ".data", ".bin", ".md", ".png")
_NOT_COPIED_NAMES = {"model.safetensors.index.json", "slm_meta.json", "metrics.json", "report_section.md"}


def run(cfg: QuantizeConfig, inp: StageInput) -> StageOutput:
    # setup
    src, dst = Path(inp.artifact), Path(inp.workdir)
    row = SCHEMES[cfg.scheme]
    out_kind = output_kind(cfg, artifact_kind(src))  # ValueError with the fix when the order is wrong
    tokenizer = load_tokenizer(src)
    examples = list(inp.data.eval)[: cfg.limit] if cfg.limit else list(inp.data.eval)
    if not examples:
        raise ValueError("quantize needs eval examples to measure the accuracy delta (data.eval is empty)")

    # quantize: the scheme's function writes the model files; slm_meta.json says how to reopen them
    t0 = time.perf_counter()
    calibration = _calibration_prompts(tokenizer, inp, cfg.calibration.samples) if row.calibrated else []
    job = QuantizeJob(cfg.scheme, device=inp.device, block_size=cfg.block_size, calibration=calibration)
    row.quantize(src, dst, job)
    copy_side_files(src, dst)
    meta = {"kind": out_kind, "stage": "quantize", "parent": str(src), "scheme": cfg.scheme}
    if row.reopen_format:
        meta[FORMAT_KEY] = row.reopen_format
    meta["config"] = cfg.model_dump()
    write_meta(dst, **meta)
    quantize_s = time.perf_counter() - t0

    # measure (the quantized model is reopened from disk, as evaluate, bench and serve will)
    t1 = time.perf_counter()
    generators = {
        name: open_generator(folder, inp.device, inp.threads) for name, folder in (("input", src), ("output", dst))
    }
    latency = interleaved_latency(
        generators, prompt_ids(tokenizer, examples[0].prompt), LATENCY_NEW_TOKENS, LATENCY_REPEATS
    )
    before = measure(generators["input"], tokenizer, examples, src, latency["input"])
    after = measure(generators["output"], tokenizer, examples, dst, latency["output"])
    metrics = compare(before, after)
    measure_s = time.perf_counter() - t1

    # save
    write_meta(dst, **meta, metrics=metrics)
    return StageOutput(
        artifact=dst,
        metrics=metrics,
        timings={"quantize_s": quantize_s, "measure_s": measure_s},
        extra={"report_md": report_md(cfg.scheme, metrics)},
    )


def copy_side_files(src: Path, dst: Path) -> None:
    """Copy tokenizer, config and generation files the quantizer did not write (top level only)."""
    for path in sorted(src.iterdir()):
        if not path.is_file() or path.name.startswith(".") or (dst / path.name).exists():
            continue
        if path.name in _NOT_COPIED_NAMES or path.name.endswith(_NOT_COPIED_SUFFIXES):
            continue
        shutil.copy2(path, dst / path.name)


def _calibration_prompts(tokenizer: Any, inp: StageInput, samples: int) -> list[list[int]]:
    """Tokenized generation prompts for static calibration: train prompts first, then eval."""
    pool = list(inp.data.train) + list(inp.data.eval)
    if not pool:
        raise ValueError("ort_int8_static needs the recipe's data for calibration, and it has no examples")
    return [prompt_ids(tokenizer, ex.prompt) for ex in pool[:samples]]


def open_generator(folder: Path, device: str, threads: int | None = None) -> Any:
    """A Generator over the artifact, reloaded from disk by the runtime's loader (a quantized
    folder's slm_meta.json says how its weights are reopened)."""
    return load_generator(folder, device=device, threads=threads)


def measure(
    generator: Any, tokenizer: Any, examples: list[Any], folder: Path, speed: dict[str, float]
) -> dict[str, float]:
    """Bytes on disk and exact-match accuracy of one artifact, with its measured latency."""
    quality = exact_match(generator, tokenizer, examples, generation_budget(tokenizer, examples))
    return {
        "bytes": float(bytes_on_disk(folder)),
        "accuracy": quality["accuracy"],
        "answer_rate": quality["answer_rate"],
        **speed,
    }


def compare(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The stage's flat metrics: the quantized artifact's figures, the input's, and their deltas."""
    metrics = dict(after)
    metrics.update({f"input_{k}": v for k, v in before.items()})
    metrics["bytes_ratio"] = after["bytes"] / before["bytes"] if before["bytes"] else 0.0
    metrics["accuracy_delta"] = after["accuracy"] - before["accuracy"]
    base = before["latency_ms_median"]
    metrics["latency_ratio"] = after["latency_ms_median"] / base if base else 0.0
    # slower = beyond the noise: by more than 5% and more than either run's interquartile spread
    margin = max(SLOWER_TOLERANCE * base, before["latency_ms_spread"], after["latency_ms_spread"])
    metrics["slower_than_input"] = 1.0 if after["latency_ms_median"] - base > margin else 0.0
    return metrics


def report_md(scheme: str, m: dict[str, float]) -> str:
    lines = [
        f"### quantize: {scheme}",
        "",
        "| | input | quantized | change |",
        "|---|---|---|---|",
        f"| bytes on disk | {m['input_bytes'] / 1e6:.2f} MB | {m['bytes'] / 1e6:.2f} MB | ×{m['bytes_ratio']:.2f} |",
        f"| accuracy | {m['input_accuracy']:.3f} | {m['accuracy']:.3f} | {m['accuracy_delta']:+.3f} |",
        f"| batch-1 decode latency ({LATENCY_NEW_TOKENS} tokens) | {m['input_latency_ms_median']:.1f} ms "
        f"| {m['latency_ms_median']:.1f} ms | ×{m['latency_ratio']:.2f} |",
    ]
    if m["slower_than_input"]:
        lines += [
            "",
            f"**Warning:** the {scheme} artifact decodes slower than its input "
            f"(×{m['latency_ratio']:.2f} batch-1 latency): it saves bytes, not time, on this hardware.",
        ]
    return "\n".join(lines) + "\n"
