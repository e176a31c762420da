"""The `prune` stage: one-shot structured pruning of a Hugging Face decoder, checked and measured.

setup    load the input model; check the ratios against it (impossible ones are errors that
         name the field); tokenize calibration batches from the recipe's training examples
prune    depth first (drop the `layers` blocks that change their input least), then width
         (KV-head groups, MLP channels, hidden width) by the chosen importance criterion
save     a plain Hugging Face folder in the workdir: rewritten config, safetensors, tokenizer
gate     reload it with AutoModelForCausalLM.from_pretrained and compare logits with the
         in-memory pruned model; export it to ONNX and check greedy agreement with PyTorch.
         Either failing fails the stage (PruneGateError)
measure  parameters and bytes before/after; per-segment perplexity and exact-match accuracy
         before/after on `measure.limit` / `measure.generate` eval examples (healing is the
         following distill stage); batch-1 decode latency of pruned vs unpruned, interleaved
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch

from slm_toolkit.core.artifacts import Kind, write_meta
from slm_toolkit.data.segments import prompt_ids
from slm_toolkit.measures.latency import interleaved_latency
from slm_toolkit.measures.metrics import bytes_on_disk, count_parameters, exact_match, generation_budget
from slm_toolkit.measures.parity import parity
from slm_toolkit.measures.scoring import segment_perplexity
from slm_toolkit.models.load import load_model
from slm_toolkit.models.onnx_export import export_onnx
from slm_toolkit.prune.config import MeasureConfig, PruneConfig
from slm_toolkit.runtime.loader import load_generator
from slm_toolkit.stage import StageInput, StageOutput

RELOAD_ATOL = 1e-4  # fp32 reload of the same weights is exact; this only allows for kernels
ONNX_PROMPTS = 4
ONNX_NEW_TOKENS = 16


class PruneGateError(RuntimeError):
    """The saved pruned model does not compute what the in-memory pruned model computes."""


def run(cfg: PruneConfig, inp: StageInput) -> StageOutput:
    from slm_toolkit.prune.importance import calibration_batches

    # setup
    torch.manual_seed(inp.seed)
    src, dst = Path(inp.artifact), Path(inp.workdir)
    model, tokenizer = load_model(src, device=inp.device)
    plan = check_against_model(cfg, model.config)
    batches = calibration_batches(
        tokenizer,
        inp.data.train or inp.data.eval,
        cfg.calibration.samples,
        cfg.calibration.batch_size,
        device=inp.device,
    )
    check_finite(model, batches[0], f"the input model {src}")
    params_before = count_parameters(model)

    # prune
    t0 = time.perf_counter()
    shape, dropped = prune_model(model, cfg, plan, batches)
    prune_s = time.perf_counter() - t0

    # save + gate
    t1 = time.perf_counter()
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst, safe_serialization=True)
    tokenizer.save_pretrained(dst)
    reloaded, reload_diff = reload_gate(model, dst, batches[0])
    onnx = onnx_gate(reloaded, dst, tokenizer, inp.data.eval or inp.data.train, inp.threads)
    gate_s = time.perf_counter() - t1

    # measure
    t2 = time.perf_counter()
    metrics = {
        "input_params": float(params_before),
        "params": float(count_parameters(reloaded)),
        "input_bytes": float(bytes_on_disk(src)),
        "bytes": float(bytes_on_disk(dst)),
        "layers_removed": float(len(dropped)),
        "kv_heads_removed": float(plan.kv_heads_removed),
        **{k: float(v) for k, v in shape.items()},
        "reload_max_abs_logit_diff": reload_diff,
        **onnx,
    }
    metrics.update(quality_and_speed(src, reloaded, tokenizer, list(inp.data.eval), inp.device, cfg.measure))
    metrics["params_ratio"] = metrics["params"] / metrics["input_params"]
    metrics["bytes_ratio"] = metrics["bytes"] / metrics["input_bytes"] if metrics["input_bytes"] else 0.0
    measure_s = time.perf_counter() - t2

    write_meta(
        dst,
        kind=Kind.HF,
        stage="prune",
        parent=str(src),
        config=cfg.model_dump(),
        dropped_layers=dropped,
        shape=shape,
        metrics=metrics,
    )
    return StageOutput(
        artifact=dst,
        metrics=metrics,
        timings={"prune_s": prune_s, "gate_s": gate_s, "measure_s": measure_s},
        extra={"report_md": report_md(cfg, metrics, dropped)},
    )


def check_against_model(cfg: PruneConfig, config: Any):
    """The width plan for this model; ValueError (naming the field) for ratios it cannot take."""
    from slm_toolkit.prune.depth import check_layers
    from slm_toolkit.prune.width import plan_width

    if not all(hasattr(config, k) for k in ("num_attention_heads", "intermediate_size", "num_hidden_layers")):
        raise ValueError(
            f"prune supports Llama-style decoders (q/k/v/o + gate/up/down projections); "
            f"{type(config).__name__} lacks their config fields"
        )
    check_layers(config, cfg.layers)
    return plan_width(config, cfg.heads, cfg.mlp, cfg.hidden, cfg.round_to)


def prune_model(model: Any, cfg: PruneConfig, plan: Any, batches: list) -> tuple[dict[str, int], list[int]]:
    """Depth, then width, in place. Returns (the new shape, indices of the dropped layers)."""
    from slm_toolkit.prune.depth import block_distances, drop_layers, least_important
    from slm_toolkit.prune.importance import weight_scores
    from slm_toolkit.prune.width import head_dim_of, prune_width

    dropped: list[int] = []
    if cfg.layers:
        dropped = least_important(block_distances(model, batches), cfg.layers)
        drop_layers(model, dropped)
    c = model.config
    shape = {
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": head_dim_of(c),
        "intermediate_size": c.intermediate_size,
        "hidden_size": c.hidden_size,
    }
    if plan.active:
        scores = weight_scores(model, cfg.importance, batches)
        shape = prune_width(model, plan, scores, cfg.importance, batches[0].input_ids[:1])
    model.config.head_dim = shape["head_dim"]
    shape["num_hidden_layers"] = model.config.num_hidden_layers
    return shape, dropped


def check_finite(model: Any, batch: Any, what: str) -> None:
    with torch.inference_mode():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    if not torch.isfinite(logits).all():
        raise PruneGateError(
            f"prune: {what} gives non-finite logits (NaN/inf) on the calibration data; "
            "its weights are broken (check the stage that produced it)"
        )


def reload_gate(model: Any, folder: Path, batch: Any) -> tuple[Any, float]:
    """Reload `folder` through from_pretrained; its logits must equal the in-memory model's."""
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, dtype=next(model.parameters()).dtype)
    reloaded.to(next(model.parameters()).device).eval()
    model.eval()
    with torch.inference_mode():
        a = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        b = reloaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    if not torch.isfinite(a).all():
        raise PruneGateError("prune gate: the pruned model gives non-finite logits (NaN/inf)")
    diff = float((a.float() - b.float()).abs().max()) if a.shape == b.shape else float("inf")
    if not diff <= RELOAD_ATOL:  # NaN fails too
        raise PruneGateError(
            f"prune gate: the saved model reloaded by AutoModelForCausalLM gives logits up to {diff:.3g} "
            f"away from the pruned model in memory (allowed {RELOAD_ATOL:g}); the config "
            "rewritten in config.json does not describe the pruned weights"
        )
    return reloaded, diff


def onnx_gate(
    reloaded: Any, folder: Path, tokenizer: Any, examples: list, threads: int | None = None
) -> dict[str, float]:
    """Export to ONNX (optimum, via models/onnx_export.py) in a hidden scratch folder and require the same greedy
    tokens as PyTorch on a few prompts (the export stage's parity check). The scratch is removed."""
    from slm_toolkit.runtime.torch import TorchGenerator

    prompts = [prompt_ids(tokenizer, ex.prompt) for ex in examples[:ONNX_PROMPTS]]
    scratch = folder / ".onnx_check"
    try:
        export_onnx(folder, scratch, optimize="none")
        metrics = parity(
            TorchGenerator(reloaded), load_generator(scratch, device="cpu", threads=threads), prompts, ONNX_NEW_TOKENS
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if metrics["parity_token_agreement"] < 1.0 or not metrics["parity_max_abs_logit_diff"] < float("inf"):
        raise PruneGateError(
            f"prune gate: the ONNX export of the pruned model agrees with PyTorch's greedy tokens on "
            f"only {metrics['parity_token_agreement']:.0%} of {len(prompts)} prompts "
            f"(max |logit diff| {metrics['parity_max_abs_logit_diff']:.3g})"
        )
    return {
        "onnx_token_agreement": metrics["parity_token_agreement"],
        "onnx_max_abs_logit_diff": metrics["parity_max_abs_logit_diff"],
    }


def quality_and_speed(
    src: Path, pruned: Any, tokenizer: Any, examples: list, device: str, measure: MeasureConfig | None = None
) -> dict[str, float]:
    """Per-segment perplexity and exact-match accuracy of the input and the pruned model on the
    eval examples (bounded by `measure`), and batch-1 decode latency of both, measured
    interleaved (A, B, A, B, ...) so load drifts hit both alike."""
    from slm_toolkit.runtime.torch import TorchGenerator

    measure = measure or MeasureConfig()
    if not examples:
        raise ValueError("prune needs eval examples to measure accuracy before/after (data.eval is empty)")
    scored = examples[: measure.limit] if measure.limit else examples
    generated = scored[: measure.generate]
    before, after = TorchGenerator.from_folder(src, device=device), TorchGenerator(pruned)
    out: dict[str, float] = {}
    for prefix, gen in (("input_", before), ("", after)):
        ppl = segment_perplexity(gen, tokenizer, scored)
        out.update({prefix + k: v for k, v in ppl.items() if k.startswith("ppl_")})
    if generated:
        budget = measure.max_new_tokens or generation_budget(tokenizer, generated)
        q0 = exact_match(before, tokenizer, generated, budget)
        q1 = exact_match(after, tokenizer, generated, budget)
        out.update(
            input_accuracy=q0["accuracy"],
            accuracy=q1["accuracy"],
            answer_rate=q1["answer_rate"],
            retention=q1["accuracy"] / q0["accuracy"] if q0["accuracy"] else 0.0,
            n_eval=float(len(generated)),
        )
    prompt = prompt_ids(tokenizer, examples[0].prompt)
    speed = interleaved_latency(
        {"input": before, "pruned": after}, prompt, measure.latency_new_tokens, measure.latency_rounds
    )
    t0, t1 = speed["input"]["latency_ms_median"], speed["pruned"]["latency_ms_median"]
    out.update(input_latency_ms_median=t0, latency_ms_median=t1, speedup=t0 / t1 if t1 else 0.0)
    return out


def report_md(cfg: PruneConfig, m: dict[str, float], dropped: list[int]) -> str:
    what = [
        f"heads {cfg.heads:g}" if cfg.heads else "",
        f"mlp {cfg.mlp:g}" if cfg.mlp else "",
        f"hidden {cfg.hidden:g}" if cfg.hidden else "",
        f"layers {cfg.layers} (dropped {dropped})" if cfg.layers else "",
    ]
    rows = [
        f"| parameters | {m['input_params'] / 1e6:.3f} M | {m['params'] / 1e6:.3f} M | ×{m['params_ratio']:.2f} |",
        f"| bytes on disk | {m['input_bytes'] / 1e6:.2f} MB | {m['bytes'] / 1e6:.2f} MB | ×{m['bytes_ratio']:.2f} |",
    ]
    for seg in ("cot", "answer"):
        if f"ppl_{seg}" in m and f"input_ppl_{seg}" in m:
            rows.append(
                f"| perplexity, {seg} (before healing) | {m[f'input_ppl_{seg}']:.3f} | {m[f'ppl_{seg}']:.3f} | "
                f"×{m[f'ppl_{seg}'] / m[f'input_ppl_{seg}']:.2f} |"
            )
    if "accuracy" in m:
        rows.append(
            f"| accuracy (before healing, {int(m['n_eval'])} examples) | {m['input_accuracy']:.3f} | "
            f"{m['accuracy']:.3f} | retention {m['retention']:.2f} |"
        )
    rows.append(
        f"| batch-1 decode, {cfg.measure.latency_new_tokens} tokens | {m['input_latency_ms_median']:.1f} ms | "
        f"{m['latency_ms_median']:.1f} ms | ×{m['speedup']:.2f} faster |"
    )
    return (
        "\n".join(
            [
                f"### prune: {', '.join(w for w in what if w)}; importance {cfg.importance}",
                "",
                "| | input | pruned | change |",
                "|---|---|---|---|",
                *rows,
                "",
                f"Shape: {int(m['num_hidden_layers'])} layers, {int(m['num_attention_heads'])} heads / "
                f"{int(m['num_key_value_heads'])} KV heads × {int(m['head_dim'])}, MLP {int(m['intermediate_size'])}, "
                f"hidden {int(m['hidden_size'])}. Gates: reload max |logit diff| {m['reload_max_abs_logit_diff']:.1e}; "
                f"ONNX greedy agreement {m['onnx_token_agreement']:.0%}. Quality after healing comes from the next "
                "distill + evaluate stages.",
            ]
        )
        + "\n"
    )
