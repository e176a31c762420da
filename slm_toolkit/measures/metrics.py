"""The shared metrics: one implementation of every count and measurement the stages report.

Prune, quantize, export, evaluate and bench call these for their before/after figures, so two
stages never count differently. Nothing here reads a config object: plain arguments only.

- `count_parameters(model)`: unique parameters of a torch model (tied weights counted once).
- `onnx_parameter_count(folder)`: elements of the initializers of an ONNX folder's graphs.
- `bytes_on_disk(folder)`: bytes of the files that make up the model (weights, config, tokenizer).
- `generation_budget(...)`: max_new_tokens enough for the longest reference continuation.
- `exact_match(...)`: greedy generation through a `Generator`, answer extraction, exact match.
- `segment_perplexity(...)`: teacher-forced mean NLL and perplexity per segment (P, CoT, A).
- `decode_latency(...)`: batch-1 generation latency (median and IQR of repeats, after warm-up).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slm_toolkit.data.example import ANSWER, COT, PROMPT, Example

_SEGMENTS = {"prompt": PROMPT, "cot": COT, "answer": ANSWER}
# Files of an artifact folder that are not the model: lineage, reports, plots, logs, checkpoints.
_NOT_MODEL_SUFFIXES = (".md", ".png", ".svg", ".log", ".tmp", ".lock")
_NOT_MODEL_NAMES = {"slm_meta.json", "metrics.json", "manifest.json"}


# -- size ------------------------------------------------------------------------------------
def count_parameters(model: Any) -> int:
    """Number of parameter elements of a torch module; tied (shared) tensors count once.

    Quantized tensor subclasses (torchao) report their logical shape, so an int8 model has the
    same count as its float parent; bitsandbytes 4-bit weights report their packed size.
    """
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return int(total)


def onnx_parameter_count(folder: Path | str) -> int:
    """Elements of all initializers of the folder's *.onnx graphs (external data not loaded).

    Quantized graphs also count their scales and zero points (a few per tensor).
    """
    import onnx

    total = 0
    for path in sorted(Path(folder).glob("*.onnx")):
        graph = onnx.load(str(path), load_external_data=False).graph
        for init in graph.initializer:
            total += math.prod(init.dims) if init.dims else 1
    return int(total)


def bytes_on_disk(folder: Path | str) -> int:
    """Bytes of the model files in `folder`: weights, config and tokenizer files, any depth.

    Not counted: slm_meta.json / metrics.json, reports and plots (*.md, *.png), logs, hidden
    files and folders (temporary or checkpoints, e.g. `.ckpt/`) and a `checkpoints/` folder, so
    a stage folder that is also the artifact is measured as the model alone.
    """
    folder = Path(folder)
    if folder.is_file():
        return folder.stat().st_size
    total = 0
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).parts
        if not path.is_file() or any(part.startswith(".") for part in rel) or rel[0] == "checkpoints":
            continue
        if path.name in _NOT_MODEL_NAMES or path.suffix in _NOT_MODEL_SUFFIXES:
            continue
        total += path.stat().st_size
    return int(total)


# -- quality ---------------------------------------------------------------------------------
def generation_budget(tokenizer: Any, examples: Sequence[Example], margin: float = 0.25) -> int:
    """max_new_tokens that lets a model write the longest reference continuation of `examples`
    (CoT, end-of-think marker, answer, EOS) with `margin` to spare (at least 8 tokens)."""
    from slm_toolkit.data.segments import prompt_ids, tokenize_examples

    full = tokenize_examples(tokenizer, examples)
    longest = max(len(t.ids) - len(prompt_ids(tokenizer, ex.prompt)) for t, ex in zip(full, examples))
    return longest + max(8, int(margin * longest))


def generate_answers(
    generator: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    max_new_tokens: int,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "generate",
) -> list[tuple[str, str | None]]:
    """Greedy generation for every example's prompt; return (generated text, answer or None).

    Prompts are batched by length (less padding) and results returned in input order. The
    answer comes from `data.segments.split_generation` (None when no end-of-think marker).
    """
    from tqdm.auto import tqdm

    from slm_toolkit.data.segments import prompt_ids, split_generation
    from slm_toolkit.runtime.base import GenerationConfig

    prompts = [prompt_ids(tokenizer, ex.prompt) for ex in examples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    texts: list[str] = [""] * len(prompts)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False, unit="batch"):
        rows = order[start : start + batch_size]
        outs = generator.generate([prompts[i] for i in rows], config)
        for i, new_ids in zip(rows, outs):
            texts[i] = tokenizer.decode(new_ids, skip_special_tokens=False)
    return [(text, split_generation(text)[1]) for text in texts]


def exact_match(
    generator: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    max_new_tokens: int,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, float]:
    """Greedy-decoding exact match: {"accuracy", "answer_rate", "n"}.

    accuracy = share of examples whose extracted answer `data.answers.is_correct`;
    answer_rate = share of generations with a parseable answer (end-of-think marker reached).
    """
    from slm_toolkit.data.answers import is_correct

    if not examples:
        raise ValueError("exact_match needs at least one example")
    results = generate_answers(generator, tokenizer, examples, max_new_tokens, batch_size, progress)
    correct = sum(is_correct(ans, ex.answer) for (_, ans), ex in zip(results, examples))
    answered = sum(ans is not None for _, ans in results)
    n = len(examples)
    return {"accuracy": correct / n, "answer_rate": answered / n, "n": float(n)}


def segment_perplexity(
    model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int = 32
) -> dict[str, float]:
    """Teacher-forced mean NLL (nats/token) and perplexity of each segment, over all examples.

    Every token from the second on is predicted from the ones before it and counted in the
    segment that token belongs to (data.segments.tokenize_example's ids). Returns nll_prompt,
    nll_cot, nll_answer and ppl_* = exp(nll_*); a segment with no tokens at all is left out.
    """
    from slm_toolkit.data.segments import tokenize_examples

    sums = {sid: 0.0 for sid in _SEGMENTS.values()}
    counts = {sid: 0 for sid in _SEGMENTS.values()}
    seqs = tokenize_examples(tokenizer, examples)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(seqs), batch_size):
        batch = seqs[start : start + batch_size]
        nll, segs = _token_nll(model, batch, pad, device)
        for sid in sums:
            hit = segs == sid
            sums[sid] += float(nll[hit].sum())
            counts[sid] += int(hit.sum())
    out: dict[str, float] = {}
    for name, sid in _SEGMENTS.items():
        if counts[sid]:
            mean = sums[sid] / counts[sid]
            out[f"nll_{name}"] = mean
            out[f"ppl_{name}"] = math.exp(min(mean, 700.0))
    return out


def _token_nll(model: Any, batch: Sequence[Any], pad: int, device: Any) -> tuple[Any, Any]:
    """Per-target-token NLL [B, T-1] and the target tokens' segment ids (-1 on padding)."""
    import torch

    from slm_toolkit.data.tensors import pad_right

    ids, segs = pad_right(batch, pad)
    mask = (segs >= 0).long()
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return nll, segs[:, 1:]


# -- speed -----------------------------------------------------------------------------------
def decode_latency(
    generator: Any,
    prompt_ids: Sequence[int],
    new_tokens: int,
    repeats: int = 5,
    warmup: int = 1,
) -> dict[str, float]:
    """Batch-1 latency of generating exactly `new_tokens` tokens (EOS ignored) after `prompt_ids`.

    `warmup` untimed runs, then `repeats` timed ones (prefill included). Returns
    latency_ms_median, latency_ms_spread (the interquartile range p75 - p25 of the repeats;
    0 with fewer than 2 repeats), latency_ms_min, latency_ms_max, new_tokens and tok_s
    (generated tokens per second at the median latency).
    """
    from slm_toolkit.runtime.base import GenerationConfig

    if repeats < 1 or new_tokens < 1:
        raise ValueError("decode_latency needs repeats >= 1 and new_tokens >= 1")
    room = int(getattr(generator, "max_length", 1 << 30)) - len(prompt_ids)
    new_tokens = max(1, min(new_tokens, room))
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, ignore_eos=True)
    for _ in range(warmup):
        generator.generate([list(prompt_ids)], config)
    times, produced = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = generator.generate([list(prompt_ids)], config)
        times.append((time.perf_counter() - t0) * 1000.0)
        produced.append(len(out[0]))
    median = statistics.median(times)
    if len(times) >= 2:
        q = statistics.quantiles(times, n=4, method="inclusive")
        spread = q[2] - q[0]
    else:
        spread = 0.0
    tokens = statistics.median(produced)
    return {
        "latency_ms_median": median,
        "latency_ms_spread": spread,
        "latency_ms_min": min(times),
        "latency_ms_max": max(times),
        "new_tokens": float(tokens),
        "tok_s": tokens / (median / 1000.0) if median > 0 else 0.0,
    }
