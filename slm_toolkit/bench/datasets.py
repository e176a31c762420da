"""Benchmark prompts: random (fixed lengths), GSM8K questions (real length variance), or JSONL.

- random: `input_len` random token ids from the tokenizer's vocabulary (special tokens
  excluded), the way vLLM's random dataset does; sent as token ids to /v1/completions, or
  decoded to text for the chat API. The output is forced to `output_len` tokens
  (min_tokens + ignore_eos). Without a tokenizer (a bare --url): `input_len` random words.
- gsm8k: questions of GSM8K's test split, read from $SLM_GSM8K/test.jsonl (a folder with
  GSM8K's JSONL files); outputs up to `output_len`, the model may stop earlier (real output
  variance).
- FILE.jsonl: one object per line with "prompt" (or "question"/"text") and optionally
  "output_len" (else `output_len`, not forced).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from slm_toolkit.bench.client import Prompt
from slm_toolkit.data.loaders import read_jsonl_records

GSM8K_ENV = "SLM_GSM8K"

_WORDS = (
    "time year people way day man thing woman life child world school state family student "
    "group country problem hand part place case week company system program question work "
    "number night point home water room mother area money story fact month lot right study"
).split()


def load_prompts(
    dataset: str, n: int, input_len: int, output_len: int, seed: int, tokenizer=None, as_text: bool = False
) -> list[Prompt]:
    """`n` prompts (cycled if the source has fewer). as_text: the chat API needs text prompts."""
    if dataset == "random":
        return random_prompts(n, input_len, output_len, seed, tokenizer, as_text)
    if dataset == "gsm8k":
        return _cycle(_read_jsonl(gsm8k_test_file(), output_len), n, seed)
    path = Path(dataset)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    return _cycle(_read_jsonl(path, output_len), n, seed)


def gsm8k_test_file() -> Path:
    """$SLM_GSM8K/test.jsonl; a one-line error when the variable is unset or the file missing."""
    folder = os.environ.get(GSM8K_ENV)
    if not folder:
        raise FileNotFoundError(
            f"--dataset gsm8k reads ${GSM8K_ENV}/test.jsonl: set {GSM8K_ENV} to a folder with GSM8K's test.jsonl "
            "(or pass --dataset path/to/questions.jsonl)"
        )
    path = Path(folder).expanduser() / "test.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"GSM8K questions not found: {path} ({GSM8K_ENV}={folder})")
    return path


def random_prompts(
    n: int, input_len: int, output_len: int, seed: int, tokenizer=None, as_text: bool = False
) -> list[Prompt]:
    rng = random.Random(seed)
    if tokenizer is None:
        return [Prompt(" ".join(rng.choice(_WORDS) for _ in range(input_len)), output_len, True) for _ in range(n)]
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    out = []
    for _ in range(n):
        ids = [rng.choice(vocab) for _ in range(input_len)]
        if as_text:
            out.append(Prompt(tokenizer.decode(ids), output_len, True))
        else:
            out.append(Prompt(ids, output_len, True, input_len=input_len))
    return out


def _read_jsonl(path: Path, output_len: int) -> list[Prompt]:
    prompts = []
    for lineno, rec in read_jsonl_records(path):
        text = next((rec[k] for k in ("prompt", "question", "text") if isinstance(rec.get(k), str)), None)
        if not text:
            raise ValueError(f'{path}:{lineno}: needs a non-empty "prompt" (or "question"/"text") string')
        n_out = rec.get("output_len", output_len)
        if not isinstance(n_out, int) or n_out < 1:
            raise ValueError(f"{path}:{lineno}: output_len must be an integer >= 1")
        prompts.append(Prompt(text, n_out, force_len="output_len" in rec))
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def _cycle(prompts: list[Prompt], n: int, seed: int) -> list[Prompt]:
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    return [prompts[order[i % len(order)]] for i in range(n)]
