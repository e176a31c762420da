"""The demo world's builtin models: `builtin:arith-teacher` and `builtin:arith-student`.

Both are Llama models (transformers' LlamaConfig, built from config, nothing downloaded) over
the character-level demo tokenizer, trained here on first use and cached in
`paths.cache_dir()/builtin/<name>-<hash>`, where the hash covers everything that shapes the
weights: architecture, task knobs, training data kind, steps, batch, learning rate, seed and
`CODE_VERSION`. A cache entry is written through a temporary folder renamed into place, so a
killed training never leaves a half entry. Each entry is a plain Hugging Face folder
(config.json, model.safetensors, tokenizer files) plus slm_meta.json with the training
figures (held-out accuracy, seconds, parameters).

- teacher (~1.0M parameters: hidden 128, 4 layers, 4 heads, 2 KV heads, MLP 512) is trained on
  the recipe's demo task with its full chain of thought.
- student (~0.19M: hidden 64, 3 layers, 4 heads, 2 KV heads, MLP 256) is a *base* model: it is
  pretrained on the full output format (CoT, checks, `</think>`, answer, EOS) at every step
  count 1..steps but with easy operands (first operand from the task's range, the others
  0-2), so it always writes a parseable answer yet gets most real problems wrong, as a real
  pretrained student does before distillation.

The builtin models are like downloaded checkpoints: trained with their own fixed seed, so the
recipe's seed does not retrain them.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from slm_toolkit.core import paths
from slm_toolkit.core.artifacts import Kind, atomic_dir, write_meta
from slm_toolkit.core.errors import ModelNotAvailable
from slm_toolkit.data.config import DemoTaskConfig
from slm_toolkit.data.example import PROMPT, Example
from slm_toolkit.data.segments import tokenize_examples
from slm_toolkit.demo import train_lm
from slm_toolkit.demo.task import format_example, generate_examples
from slm_toolkit.measures.metrics import count_parameters, exact_match, generation_budget

CODE_VERSION = 1  # bump when training code changes what a recipe produces
# PROMPT_LOSS_NOTE: the builtins are trained to predict everything after the prompt (template,
# CoT, answer, EOS), not the prompt: its operands are uniformly random, and adding their loss
# (irreducible, ~2 nats/token) to the gradient cut the teacher's held-out accuracy from 99.6% to
# 64% at the same 600 steps. So a builtin's ppl_prompt is meaningless (very high); CoT and
# answer perplexities are the ones to read.
TRAIN_SEED = 0
HELDOUT_SEED = 1_000_003  # held-out problems for the accuracy stored in slm_meta.json
HELDOUT_N = 256

ARCH = {
    "arith-teacher": dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512
    ),
    "arith-student": dict(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=256
    ),
}
TRAINING = {
    "arith-teacher": dict(data="task", steps=600, batch_size=64, lr=3e-3, pool=40_000),
    "arith-student": dict(data="easy", steps=300, batch_size=64, lr=3e-3, pool=20_000),
}


def builtin_recipe(name: str, task: dict, steps: int | None = None) -> dict[str, Any]:
    """Everything that determines the weights of builtin `name` for `task` (hashed for the cache)."""
    if name not in ARCH:
        raise ModelNotAvailable(
            f"unknown builtin model 'builtin:{name}'; choose one of " + ", ".join(f"builtin:{n}" for n in ARCH)
        )
    knobs = DemoTaskConfig(**(task or {})).model_dump()
    training = dict(TRAINING[name], seed=TRAIN_SEED)
    if steps is not None:
        training["steps"] = int(steps)
    return {"name": name, "arch": ARCH[name], "task": knobs, "training": training, "code": CODE_VERSION}


def recipe_hash(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def builtin_model(name: str, *, task: dict, seed: int = 0, progress: bool = True, steps: int | None = None) -> Path:
    """The cached folder of builtin `name` trained for `task`, training it first if needed.

    `seed` is accepted for the resolve_model signature and ignored (see the module doc);
    `steps` overrides the training steps (tests), which changes the cache key.
    """
    recipe = builtin_recipe(name, task, steps)
    final = paths.cache_dir() / "builtin" / f"{name}-{recipe_hash(recipe)}"
    if (final / "slm_meta.json").is_file() and (final / "model.safetensors").is_file():
        return final
    _remove_stale_temporaries(final)
    if progress:
        print(
            f"builtin:{name}: first use for task {recipe['task']}: training it "
            f"({recipe['training']['steps']} steps; cached in {final})",
            file=sys.stderr,
            flush=True,
        )
    with atomic_dir(final) as tmp:
        _train_into(recipe, tmp, progress)
    return final


def _remove_stale_temporaries(final: Path, older_than_s: float = 3600.0) -> None:
    """Remove temporary folders of `final` left by killed trainings (an hour old: not in use)."""
    if not final.parent.is_dir():
        return
    for tmp in final.parent.glob(f".{final.name}.*.tmp"):
        if time.time() - tmp.stat().st_mtime > older_than_s:
            shutil.rmtree(tmp, ignore_errors=True)


def build_model(arch: dict[str, Any], tokenizer: Any, max_positions: int, seed: int) -> Any:
    """A freshly initialised Llama for the demo tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlamaConfig(**{**settings, **arch})
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _train_into(recipe: dict[str, Any], out: Path, progress: bool) -> None:
    """Train the builtin described by `recipe` and save it, with its figures, into `out`."""
    import torch

    from slm_toolkit.demo.tokenizer import build_demo_tokenizer
    from slm_toolkit.runtime.torch import TorchGenerator

    task, tr = recipe["task"], recipe["training"]
    tokenizer = build_demo_tokenizer()
    heldout = generate_examples(HELDOUT_N, HELDOUT_SEED, **task)
    longest = max(len(t.ids) for t in tokenize_examples(tokenizer, heldout))
    model = build_model(recipe["arch"], tokenizer, _max_positions(longest), tr["seed"])
    pool = _training_examples(tr["data"], tr["pool"], tr["seed"], task)
    sequences = tokenize_examples(tokenizer, pool)
    t0, cpu0 = time.perf_counter(), time.process_time()
    losses = train_lm.train_causal_lm(
        model,
        sequences,
        pad_id=tokenizer.pad_token_id,
        steps=tr["steps"],
        batch_size=tr["batch_size"],
        lr=tr["lr"],
        seed=tr["seed"],
        progress=progress,
        desc=f"train builtin:{recipe['name']}",
        skip_segments=(PROMPT,),  # see PROMPT_LOSS_NOTE
    )
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    gen = TorchGenerator(model, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    quality = exact_match(gen, tokenizer, heldout, generation_budget(tokenizer, heldout), batch_size=64)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    final_loss = sum(losses[-50:]) / len(losses[-50:])
    metrics = {
        "accuracy": quality["accuracy"],
        "answer_rate": quality["answer_rate"],
        "params": float(count_parameters(model)),
        "train_seconds": seconds,
        "train_cpu_seconds": cpu_seconds,
        "train_threads": float(torch.get_num_threads()),
        "final_loss": final_loss,
    }
    write_meta(
        out,
        kind=Kind.HF,
        stage="builtin",
        parent=None,
        task=task,
        builtin=recipe,
        metrics=metrics,
        heldout={"n": HELDOUT_N, "seed": HELDOUT_SEED},
        reasoning_marker="<think>",  # what the model expects after the prompt (slm serve's chat prompt)
    )


def _max_positions(longest: int) -> int:
    """Room for the longest sequence of the task and then some (RoPE: costs no parameters)."""
    size = 128
    while size < 2 * longest:
        size *= 2
    return size


def _training_examples(kind: str, n: int, seed: int, task: dict[str, Any]) -> list[Example]:
    if kind == "task":
        return generate_examples(n, seed, **task)
    return easy_examples(n, seed, **task)


# -- the student's pretraining data ----------------------------------------------------------
def easy_examples(n: int, seed: int, steps: int, digits: int, ops: str, verify: int) -> list[Example]:
    """Examples in exactly the demo task's format, at every step count 1..steps, whose operands
    after the first are only 0-2 (1-2 for `*`): the whole output format, little arithmetic.

    Only the operands are drawn here (slm_toolkit.demo.task draws them uniformly and has no knob
    for their range); the text comes from demo's own `format_example`, so the formats cannot drift.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        first = rng.randint(0, 10**digits - 1)
        value, moves = first, []
        for _ in range(rng.randint(1, steps)):
            op = rng.choice(ops)
            choices = [b for b in (0, 1, 2) if _allowed(value, op, b, digits)]
            if not choices:  # e.g. `*` at the value cap: 1 always keeps the value
                choices = [1] if op == "*" else [0]
            b = rng.choice(choices)
            moves.append((op, b))
            value = _apply(value, op, b)
        out.append(format_example(first, moves, verify))
    return out


def _allowed(value: int, op: str, b: int, digits: int) -> bool:
    new = _apply(value, op, b)
    return (op != "*" or b != 0) and 0 <= new <= 10 ** (digits + 1) - 1


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    return a * b if op == "*" else a // b
