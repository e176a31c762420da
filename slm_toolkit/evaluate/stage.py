"""The `evaluate` stage: quality, size and speed of the current artifact, and its retention.

Reads top to bottom: open the artifact through the runtime (`load_generator`, so Hugging Face,
ONNX and TensorRT artifacts are measured by the same code), generate greedily on the eval
examples, score per-segment perplexity (Hugging Face artifacts only: see below), count size,
time batch-1 generation, and compare accuracy with the reference model's.

Metrics: accuracy, answer_rate, n_eval, nll_/ppl_{prompt,cot,answer}, params, bytes,
latency_ms_median, latency_ms_spread (interquartile range of the repeats), latency_ms_min/max,
tok_s, reference_accuracy and retention = accuracy / reference_accuracy.

Perplexity needs full-sequence logits; ONNX and TensorRT artifacts are exported for generation
(last-position logits through a KV cache), so for them perplexity is skipped rather than
approximated token by token. Their parameter count comes from the ONNX initializers, or from
the lineage in slm_meta.json for engines.

The reference's accuracy (same examples, same budget) is computed once per run and kept in
`<run>/cache/reference-<key>.json`, so evaluating after every stage does not regenerate the
teacher each time.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from slm_toolkit.core.artifacts import Kind, artifact_kind, read_meta, write_json_atomic
from slm_toolkit.evaluate.config import EvaluateConfig
from slm_toolkit.measures import metrics as M
from slm_toolkit.stage import StageInput, StageOutput


def run(cfg: EvaluateConfig, inp: StageInput) -> StageOutput:
    from slm_toolkit.data.segments import prompt_ids
    from slm_toolkit.models.load import load_tokenizer
    from slm_toolkit.runtime.loader import load_generator

    # setup
    artifact = _target(cfg.model, inp)
    examples = inp.data.eval[: cfg.limit] if cfg.limit else list(inp.data.eval)
    if not examples:
        raise ValueError("evaluate: the eval data is empty")
    kind = artifact_kind(artifact)
    tokenizer = load_tokenizer(artifact)
    max_new = cfg.max_new_tokens or M.generation_budget(tokenizer, examples)
    timings: dict[str, float] = {}

    # quality
    t0 = time.perf_counter()
    generator = load_generator(artifact, backend=cfg.backend, device=inp.device, threads=inp.threads)
    quality = M.exact_match(generator, tokenizer, examples, max_new, cfg.batch_size, progress=True)
    timings["generate_s"] = time.perf_counter() - t0
    metrics: dict[str, float] = {
        "accuracy": quality["accuracy"],
        "answer_rate": quality["answer_rate"],
        "n_eval": quality["n"],
    }
    t0 = time.perf_counter()
    model = _torch_model(generator, artifact, kind, inp.device)
    if model is not None:
        metrics.update(M.segment_perplexity(model, tokenizer, examples, cfg.batch_size))
    timings["perplexity_s"] = time.perf_counter() - t0

    # size and speed
    metrics["params"] = float(_parameters(model, artifact, kind))
    metrics["bytes"] = float(M.bytes_on_disk(artifact))
    t0 = time.perf_counter()
    latency = M.decode_latency(
        generator, prompt_ids(tokenizer, examples[0].prompt), max_new, repeats=cfg.latency_repeats, warmup=1
    )
    metrics.update({k: v for k, v in latency.items() if k != "new_tokens"})
    timings["latency_s"] = time.perf_counter() - t0

    # retention against the reference
    t0 = time.perf_counter()
    reference = _reference_folder(cfg.reference, inp.model)
    ref_acc = reference_accuracy(
        reference,
        artifact,
        quality["accuracy"],
        examples,
        max_new,
        cfg.batch_size,
        inp.device,
        inp.run_dir,
        inp.threads,
    )
    timings["reference_s"] = time.perf_counter() - t0
    metrics["reference_accuracy"] = ref_acc
    if ref_acc > 0:
        metrics["retention"] = metrics["accuracy"] / ref_acc
    return StageOutput(
        artifact=inp.artifact,
        metrics=metrics,
        timings=timings,
        extra={"report_md": _report(artifact, reference, metrics, max_new)},
    )


def _torch_model(generator: Any, artifact: Path, kind: Kind, device: str) -> Any:
    """The torch module behind the artifact (for perplexity and parameters), or None if not HF."""
    if not kind.hf_folder:  # float or quantized Hugging Face weights; exported models have no torch module
        return None
    model = getattr(generator, "model", None)
    if model is not None and hasattr(model, "parameters"):
        return model
    from slm_toolkit.models.load import load_model

    return load_model(artifact, device=device)[0]


def _parameters(model: Any, artifact: Path, kind: Kind) -> int:
    if model is not None:
        return M.count_parameters(model)
    if kind == Kind.ONNX:
        return M.onnx_parameter_count(artifact)
    return int(read_meta(artifact).get("metrics", {}).get("params", 0))  # engines: from the lineage


def _target(model: str | None, inp: StageInput) -> Path:
    """The folder to evaluate: the stage's input, or the model the config names (e.g. the base student)."""
    if model is None:
        return Path(inp.artifact or inp.model)
    from slm_toolkit.models.resolve import resolve_model

    return resolve_model(model, task=inp.data.options.get("task", {}), seed=inp.seed)


def _reference_folder(reference: str | None, model: Path) -> Path:
    if reference in (None, "model"):
        return Path(model)
    path = Path(reference).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"evaluate.reference: {reference} is not a folder (use `model` or a path)")
    return path


def reference_accuracy(
    reference: Path,
    artifact: Path,
    artifact_accuracy: float,
    examples: list,
    max_new: int,
    batch_size: int,
    device: str,
    run_dir: Path,
    threads: int | None = None,
) -> float:
    """Exact-match accuracy of `reference` on `examples`, cached in `<run_dir>/cache/`.

    The key covers the reference folder (path, weight files' sizes and times), the examples and
    the generation budget; when the artifact is the reference itself its accuracy is reused.
    """
    key = _reference_key(reference, examples, max_new)
    cache = Path(run_dir) / "cache" / f"reference-{key}.json"
    if cache.is_file():
        return float(json.loads(cache.read_text())["accuracy"])
    if Path(artifact).resolve() == Path(reference).resolve():
        accuracy = artifact_accuracy
    else:
        from slm_toolkit.models.load import load_tokenizer
        from slm_toolkit.runtime.loader import load_generator

        generator = load_generator(reference, backend="auto", device=device, threads=threads)
        tokenizer = load_tokenizer(reference)
        accuracy = M.exact_match(generator, tokenizer, examples, max_new, batch_size, progress=True)["accuracy"]
    write_json_atomic(
        cache, {"reference": str(reference), "accuracy": accuracy, "n": len(examples), "max_new_tokens": max_new}
    )
    return float(accuracy)


def _reference_key(reference: Path, examples: list, max_new: int) -> str:
    h = hashlib.sha256(str(Path(reference).resolve()).encode())
    for f in sorted(Path(reference).iterdir()):
        if f.is_file() and f.suffix in (".safetensors", ".onnx", ".data", ".onnx_data", ".engine", ".plan"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for ex in examples:
        h.update(f"\0{ex.prompt}\0{ex.cot}\0{ex.answer}".encode())
    h.update(f"\0{max_new}".encode())
    return h.hexdigest()[:16]


def _report(artifact: Path, reference: Path, metrics: dict[str, float], max_new: int) -> str:
    rows = [
        ("accuracy", "{:.1%}"),
        ("answer_rate", "{:.1%}"),
        ("retention", "{:.1%}"),
        ("reference_accuracy", "{:.1%}"),
        ("ppl_prompt", "{:.3f}"),
        ("ppl_cot", "{:.3f}"),
        ("ppl_answer", "{:.3f}"),
        ("params", "{:,.0f}"),
        ("bytes", "{:,.0f}"),
        ("latency_ms_median", "{:.1f}"),
        ("latency_ms_spread", "{:.1f}"),
        ("tok_s", "{:.1f}"),
    ]
    lines = [
        f"Artifact `{artifact}`, reference `{reference}`; greedy decoding, up to {max_new} new tokens; "
        f"latency: batch 1, {max_new} tokens, median and interquartile range of the repeats.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {name} | {fmt.format(metrics[name])} |" for name, fmt in rows if name in metrics]
    return "\n".join(lines) + "\n"
