"""The `evaluate` stage: quality, size and speed of the current artifact, and its retention.

Reads top to bottom: open the artifact through the runtime (`load_generator`, so Hugging Face,
ONNX and TensorRT artifacts are measured by the same code, each on its own fastest engine: an
ONNX int8/int4 artifact generates through ONNX Runtime's fused graph, batched), generate greedily
on the eval examples, score per-segment perplexity, count size, time batch-1 generation, and
compare with the reference model (retention of accuracy, greedy agreement).

Metrics: accuracy (exact match: `data.segments.extract_answer`), answer_rate, n_eval (examples
generated on), n_perplexity, nll_/ppl_{prompt,cot,answer}, agreement, params, bytes,
latency_ms_median, latency_ms_spread (interquartile range of the repeats), latency_ms_min/max,
tok_s, reference_accuracy, retention = accuracy / reference_accuracy, vocab_size.

Perplexity is teacher-forced through the same generator (measures/scoring.py): PyTorch scores
whole sequences, other backends the tokens after the generation prompt (so they report no
prompt perplexity). Agreement is the share of the reference's greedy tokens the artifact also
picks when fed the reference's continuation.

The reference's greedy generations (same examples, same budget) are computed once per run and
kept in `<run>/cache/reference-<key>.json`, so evaluating after every stage does not regenerate
the teacher each time.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from slm_toolkit.core.artifacts import Kind, artifact_kind, read_meta, write_json_atomic
from slm_toolkit.data.segments import prompt_ids
from slm_toolkit.evaluate.config import EvaluateConfig
from slm_toolkit.measures import metrics as M
from slm_toolkit.measures import scoring as S
from slm_toolkit.models.load import load_tokenizer
from slm_toolkit.models.resolve import resolve_model
from slm_toolkit.runtime import loader
from slm_toolkit.stage import StageInput, StageOutput


def run(cfg: EvaluateConfig, inp: StageInput) -> StageOutput:
    # setup
    artifact = _target(cfg.model, inp)
    examples = inp.data.eval[: cfg.limit] if cfg.limit else list(inp.data.eval)
    if not examples:
        raise ValueError("evaluate: the eval data is empty")
    generated = examples[: cfg.generate_limit] if cfg.generate_limit else examples
    kind = artifact_kind(artifact)
    tokenizer = load_tokenizer(artifact)
    max_new = cfg.max_new_tokens or M.generation_budget(tokenizer, generated)
    timings: dict[str, float] = {}

    # quality
    t0 = time.perf_counter()
    generator = loader.load_generator(artifact, backend=cfg.backend, device=inp.device, threads=inp.threads)
    generations = M.greedy_generations(generator, tokenizer, generated, max_new, cfg.batch_size, progress=True)
    quality = M.answer_scores(generated, M.answers_of(tokenizer, generations))
    timings["generate_s"] = time.perf_counter() - t0
    metrics: dict[str, float] = {
        "accuracy": quality["accuracy"],
        "answer_rate": quality["answer_rate"],
        "n_eval": quality["n"],
        "n_perplexity": float(len(examples)),
        "vocab_size": float(len(tokenizer)),
    }
    t0 = time.perf_counter()
    metrics.update(S.segment_perplexity(generator, tokenizer, examples, cfg.batch_size))
    timings["perplexity_s"] = time.perf_counter() - t0

    # size and speed
    metrics["params"] = float(_parameters(getattr(generator, "model", None), artifact, kind))
    metrics["bytes"] = float(M.bytes_on_disk(artifact))
    t0 = time.perf_counter()
    latency = M.decode_latency(
        generator,
        prompt_ids(tokenizer, generated[0].prompt),
        cfg.latency_new_tokens or max_new,
        repeats=cfg.latency_repeats,
        warmup=1,
    )
    metrics.update({k: v for k, v in latency.items() if k != "new_tokens"})
    timings["latency_s"] = time.perf_counter() - t0

    # against the reference: accuracy retained, greedy tokens agreed on
    t0 = time.perf_counter()
    reference = _reference_folder(cfg.reference, inp.model)
    same = Path(artifact).resolve() == Path(reference).resolve()
    ref = reference_generations(
        reference,
        generations if same else None,
        generated,
        max_new,
        cfg.batch_size,
        inp.device,
        inp.run_dir,
        inp.threads,
    )
    metrics["reference_accuracy"] = ref["accuracy"]
    if ref["accuracy"] > 0:
        metrics["retention"] = metrics["accuracy"] / ref["accuracy"]
    prompts = [prompt_ids(tokenizer, ex.prompt) for ex in generated]
    metrics["agreement"] = 1.0 if same else S.greedy_agreement(generator, prompts, ref["tokens"], cfg.batch_size)
    timings["reference_s"] = time.perf_counter() - t0
    return StageOutput(
        artifact=inp.artifact,
        metrics=metrics,
        timings=timings,
        extra={"report_md": _report(artifact, reference, metrics, max_new)},
    )


def _parameters(model: Any, artifact: Path, kind: Kind) -> int:
    if model is not None:
        return M.count_parameters(model)
    source = M.lineage_parameter_count(artifact)  # the model it was exported from, when known
    if source is not None:
        return source
    if kind == Kind.ONNX:
        return M.onnx_parameter_count(artifact)
    return int(read_meta(artifact).get("metrics", {}).get("params", 0))  # engines: from the lineage


def _target(model: str | None, inp: StageInput) -> Path:
    """The folder to evaluate: the stage's input, or the model the config names (e.g. the base student)."""
    if model is None:
        return Path(inp.artifact or inp.model)
    return resolve_model(model, task=inp.data.options.get("task", {}), seed=inp.seed)


def _reference_folder(reference: str | None, model: Path) -> Path:
    if reference in (None, "model"):
        return Path(model)
    path = Path(reference).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"evaluate.reference: {reference} is not a folder (use `model` or a path)")
    return path


def reference_generations(
    reference: Path,
    own: list[list[int]] | None,
    examples: list,
    max_new: int,
    batch_size: int,
    device: str,
    run_dir: Path,
    threads: int | None = None,
) -> dict[str, Any]:
    """{"accuracy", "tokens"}: the reference's exact match and greedy tokens on `examples`,
    cached in `<run_dir>/cache/`. `own` are the artifact's generations when it is the reference.

    The key covers the reference folder (path, weight files' sizes and times), the examples and
    the generation budget.
    """
    key = _reference_key(reference, examples, max_new)
    cache = Path(run_dir) / "cache" / f"reference-{key}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if "tokens" in saved:
            return {"accuracy": float(saved["accuracy"]), "tokens": saved["tokens"]}
    tokenizer = load_tokenizer(reference)
    if own is None:
        generator = loader.load_generator(reference, backend="auto", device=device, threads=threads)
        own = M.greedy_generations(generator, tokenizer, examples, max_new, batch_size, True, "reference")
    accuracy = M.answer_scores(examples, M.answers_of(tokenizer, own))["accuracy"]
    write_json_atomic(
        cache,
        {
            "reference": str(reference),
            "accuracy": accuracy,
            "n": len(examples),
            "max_new_tokens": max_new,
            "tokens": own,
        },
    )
    return {"accuracy": float(accuracy), "tokens": own}


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
        ("accuracy", "{:.1%}", "accuracy (exact match)"),
        ("answer_rate", "{:.1%}", "answer rate"),
        ("retention", "{:.1%}", "retention"),
        ("reference_accuracy", "{:.1%}", "reference accuracy"),
        ("agreement", "{:.1%}", "greedy agreement with the reference"),
        ("ppl_prompt", "{:.3f}", "perplexity, prompt"),
        ("ppl_cot", "{:.3f}", "perplexity, CoT"),
        ("ppl_answer", "{:.3f}", "perplexity, answer"),
        ("params", "{:,.0f}", "parameters"),
        ("bytes", "{:,.0f}", "bytes"),
        ("latency_ms_median", "{:.1f}", "latency ms (median)"),
        ("latency_ms_spread", "{:.1f}", "latency ms (IQR)"),
        ("tok_s", "{:.1f}", "tok/s"),
    ]
    n_gen, n_ppl = int(metrics.get("n_eval", 0)), int(metrics.get("n_perplexity", 0))
    lines = [
        f"Artifact `{artifact}`, reference `{reference}`; greedy decoding on {n_gen} examples, up to "
        f"{max_new} new tokens; perplexity on {n_ppl}; latency: batch 1, median and interquartile "
        "range of the repeats. A perplexity at or above the vocabulary size (worse than a uniform "
        "guess: the model was never trained on that segment) is shown as —.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for name, fmt, label in rows:
        if name in metrics:
            shown = (
                S.shown_perplexity(metrics[name], metrics.get("vocab_size"))
                if name.startswith("ppl_")
                else metrics[name]
            )
            lines.append(f"| {label} | {'—' if shown is None else fmt.format(shown)} |")
    return "\n".join(lines) + "\n"
