"""The shared metrics: one implementation of every count and measurement the stages report.

Prune, quantize, export, evaluate and bench call these for their before/after figures, so two
stages never count differently. Nothing here reads a config object: plain arguments only.

- `count_parameters(model)`: unique parameters of a torch model (tied weights counted once).
- `onnx_parameter_count(folder)`: elements of the initializers of an ONNX folder's graphs.
- `safetensors_parameter_count(folder)`, `lineage_parameter_count(folder)`: a Hugging Face
  folder's parameters from its safetensors headers; an exported artifact's, from its source.
- `bytes_on_disk(folder)`: bytes of the files that make up the model (weights, config, tokenizer).
- `generation_budget(...)`: max_new_tokens enough for the longest reference continuation.
- `greedy_generations(...)`, `answers_of(...)`, `answer_scores(...)`, `exact_match(...)`: greedy
  generation through a `Generator`, answer extraction, exact match.
- `decode_latency(...)`: batch-1 generation latency (median and IQR of repeats, after warm-up).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slm_toolkit.core.artifacts import read_meta
from slm_toolkit.data.answers import is_correct
from slm_toolkit.data.example import Example
from slm_toolkit.data.segments import extract_answer, prompt_ids, tokenize_examples, uses_think_markers
from slm_toolkit.runtime.base import GenerationConfig

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


def safetensors_parameter_count(folder: Path | str) -> int | None:
    """Elements of the tensors in a folder's *.safetensors files, read from their JSON headers
    (nothing loaded; tied weights are stored once); None when the folder has no safetensors."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with path.open("rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return int(total)


def lineage_parameter_count(folder: Path | str, depth: int = 8) -> int | None:
    """Parameters of the Hugging Face model an exported artifact was made from: slm_meta.json's
    `parent` links are followed to the first folder with safetensors weights (an ONNX file's
    initializers count a quantized weight's scales, and an untied lm_head twice)."""
    path = Path(folder)
    for _ in range(depth):
        parent = read_meta(path).get("parent")
        if not parent or not Path(parent).is_dir():
            return None
        path = Path(parent)
        count = safetensors_parameter_count(path)
        if count is not None:
            return count
    return None


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
    full = tokenize_examples(tokenizer, examples)
    longest = max(len(t.ids) - len(prompt_ids(tokenizer, ex.prompt)) for t, ex in zip(full, examples))
    return longest + max(8, int(margin * longest))


def greedy_generations(
    generator: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    max_new_tokens: int,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "generate",
) -> list[list[int]]:
    """Greedy new tokens for every example's generation prompt, in input order.

    Prompts are batched by length (less padding). A generation that stopped before the budget
    ended with an EOS, which is appended (so a continuation can be scored including its end).
    """
    from tqdm.auto import tqdm

    prompts = [prompt_ids(tokenizer, ex.prompt) for ex in examples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    out: list[list[int]] = [[] for _ in prompts]
    eos = getattr(generator, "eos_token_id", None)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False, unit="batch"):
        rows = order[start : start + batch_size]
        for i, new_ids in zip(rows, generator.generate([prompts[i] for i in rows], config)):
            out[i] = list(new_ids) + ([eos] if eos is not None and len(new_ids) < max_new_tokens else [])
    return out


def answers_of(tokenizer: Any, generations: Sequence[Sequence[int]]) -> list[tuple[str, str | None]]:
    """(generated text, extracted answer or None) for each generation (`data.segments.extract_answer`)."""
    think = uses_think_markers(tokenizer)
    texts = [
        tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) for ids in generations
    ]
    return [(text, extract_answer(text, think)) for text in texts]


def generate_answers(
    generator: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    max_new_tokens: int,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "generate",
) -> list[tuple[str, str | None]]:
    """Greedy generation for every example's prompt; return (generated text, answer or None)."""
    return answers_of(
        tokenizer, greedy_generations(generator, tokenizer, examples, max_new_tokens, batch_size, progress, desc)
    )


def answer_scores(examples: Sequence[Example], answers: Sequence[tuple[str, str | None]]) -> dict[str, float]:
    """{"accuracy", "answer_rate", "n"}: exact match after normalization, and the share of
    generations in which an answer was found at all."""
    if not examples:
        raise ValueError("exact_match needs at least one example")
    correct = sum(is_correct(ans, ex.answer) for (_, ans), ex in zip(answers, examples))
    answered = sum(ans is not None for _, ans in answers)
    n = len(examples)
    return {"accuracy": correct / n, "answer_rate": answered / n, "n": float(n)}


def exact_match(
    generator: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    max_new_tokens: int,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, float]:
    """Greedy-decoding exact match: {"accuracy", "answer_rate", "n"} (see `answer_scores`).

    The answer is the text after `</think>` for models that write it, else GSM8K's `#### x` or
    the last number (`data.segments.extract_answer`).
    """
    if not examples:
        raise ValueError("exact_match needs at least one example")
    return answer_scores(
        examples, generate_answers(generator, tokenizer, examples, max_new_tokens, batch_size, progress)
    )


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
