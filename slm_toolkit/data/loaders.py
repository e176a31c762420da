"""Load a recipe's data into a DataBundle: JSONL files, or a source a plugin adds (the demo task).

JSONL formats (`fmt`):
- "fields": {"prompt", "cot", "answer"}.
- "gsm8k":  {"question", "answer"} where the answer ends with a "#### x" line. The CoT is the
  text before that line (trailing newline stripped), the answer the text after "#### ". GSM8K's
  calculator annotations (<<48/2=24>>) are kept in the CoT as they are.
- "think":  a prompt ("prompt"/"question"/"instruction"/"input") and a completion
  ("completion"/"response"/"output") of the form "<think>cot</think>answer" (the opening tag
  is optional), or "messages" [{"role": "user", ...}, {"role": "assistant", ...}]. CoT and
  answer are stripped of surrounding whitespace.
- "auto": detected per file from the first record's fields.

Sources are the rows of one table, DATA_SOURCES, tried in order: a .jsonl file (shuffled with
the seed, the first `n_eval` kept for eval, the next `n_train` for training; a file too small for
both keeps eval's size, up to all but one example, and trains on the rest); a folder with
train.jsonl and test.jsonl (or eval.jsonl / validation.jsonl), each shuffled with the seed and cut
to size; then rows added by plugins through the `slm_toolkit.sources` entry points
(slm_toolkit.core.sources), e.g. the demo world's `builtin:arith-cot` (slm_toolkit.demo.sources).
Fewer examples than asked is a warning that says how many exist; none at all is an error.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

from slm_toolkit.core.sources import Source, SourceTable
from slm_toolkit.data.example import DataBundle, Example

FORMATS = ("auto", "fields", "gsm8k", "think")
EVAL_FILES = ("test.jsonl", "eval.jsonl", "validation.jsonl")
_PROMPT_KEYS = ("prompt", "question", "instruction", "input")
_COMPLETION_KEYS = ("completion", "response", "output")


def load_data(source: str, fmt: str, n_train: int, n_eval: int, seed: int, task: dict | None = None) -> DataBundle:
    """The recipe's data: train and eval examples (see the module docstring for sources).

    A source row's resolver is called as resolve(source, fmt=, n_train=, n_eval=, seed=, task=)
    and returns a DataBundle; `task` holds the recipe's `data.task` knobs (the demo task's).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; choose from {', '.join(FORMATS)}")
    row = DATA_SOURCES.find(source)
    if row is None:
        raise FileNotFoundError(
            f"data source {source!r} not found: expected a .jsonl file, a folder with train.jsonl and test.jsonl, "
            f"or one of: {DATA_SOURCES.known()}"
        )
    return row.resolve(source, fmt=fmt, n_train=n_train, n_eval=n_eval, seed=seed, task=task or {})


def check_data_source(source: str) -> None:
    """Static check of a data spec for recipe validation (ValueError), by the row that handles it."""
    row = DATA_SOURCES.find(source)
    if row is not None and row.check is not None:
        row.check(source)


def _load_file(source: str, *, fmt: str, n_train: int, n_eval: int, seed: int, task: dict) -> DataBundle:
    path = Path(source).expanduser()
    train, eval_ = _file_split(path, fmt, n_train, n_eval, seed)
    return DataBundle(train=train, eval=eval_, source=str(path), options={"format": fmt, "seed": seed})


def _load_folder(source: str, *, fmt: str, n_train: int, n_eval: int, seed: int, task: dict) -> DataBundle:
    path = Path(source).expanduser()
    train, eval_ = _folder_split(path, fmt, n_train, n_eval, seed)
    return DataBundle(train=train, eval=eval_, source=str(path), options={"format": fmt, "seed": seed})


def load_jsonl_examples(path: str | Path, fmt: str = "auto") -> list[Example]:
    """Every record of a JSONL file as an Example; errors name the file and line."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; choose from {', '.join(FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    records = list(read_jsonl_records(path))
    if not records:
        raise ValueError(f"{path}: no examples (the file is empty)")
    if fmt == "auto":
        fmt = detect_format(records[0][1], where=f"{path}:{records[0][0]}")
    parse = _PARSERS[fmt]
    return [parse(rec, f"{path}:{lineno}") for lineno, rec in records]


def detect_format(record: dict[str, Any], where: str = "record") -> str:
    """ "fields", "gsm8k" or "think" from a record's keys."""
    keys = set(record)
    if {"prompt", "cot", "answer"} <= keys:
        return "fields"
    if {"question", "answer"} <= keys and "####" in str(record["answer"]):
        return "gsm8k"
    if "messages" in keys or (keys & set(_PROMPT_KEYS) and keys & set(_COMPLETION_KEYS)):
        return "think"
    raise ValueError(
        f"{where}: cannot detect the data format from fields {sorted(keys)}; expected prompt/cot/answer, "
        "question/answer with '#### x' (GSM8K), or prompt + completion with <think>...</think>"
    )


# ----- splits


def _file_split(path: Path, fmt: str, n_train: int, n_eval: int, seed: int) -> tuple[list[Example], list[Example]]:
    examples = load_jsonl_examples(path, fmt)
    random.Random(seed).shuffle(examples)
    if len(examples) < 2:
        raise ValueError(f"{path}: has {len(examples)} example; need at least 2 (one for eval, one for training)")
    if len(examples) < n_train + n_eval:
        k_eval = min(n_eval, len(examples) - 1)  # eval keeps its size; training gets the rest
        warnings.warn(
            f"{path}: has {len(examples)} examples, fewer than the {n_train} + {n_eval} asked; "
            f"using {k_eval} for eval and {len(examples) - k_eval} for training",
            stacklevel=4,
        )
        n_eval = k_eval
    return examples[n_eval : n_eval + n_train], examples[:n_eval]


def _folder_split(path: Path, fmt: str, n_train: int, n_eval: int, seed: int) -> tuple[list[Example], list[Example]]:
    train_file = path / "train.jsonl"
    eval_file = next((path / name for name in EVAL_FILES if (path / name).is_file()), None)
    if not train_file.is_file() or eval_file is None:
        raise FileNotFoundError(
            f"data folder {path} must hold train.jsonl and one of {', '.join(EVAL_FILES)}; "
            f"found {sorted(p.name for p in path.iterdir())}"
        )
    return _take(train_file, fmt, n_train, seed), _take(eval_file, fmt, n_eval, seed)


def _take(path: Path, fmt: str, n: int, seed: int) -> list[Example]:
    examples = load_jsonl_examples(path, fmt)
    random.Random(seed).shuffle(examples)
    if len(examples) < n:
        warnings.warn(f"{path}: has {len(examples)} examples, fewer than the {n} asked; using all", stacklevel=5)
    return examples[:n]


# ----- reading and parsing


def read_jsonl_records(path: Path):
    """(line number, object) for every non-blank line; a line-numbered ValueError otherwise."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            yield lineno, rec


def _field(rec: dict, key: str, where: str, fmt: str) -> str:
    if key not in rec:
        raise ValueError(f"{where}: missing field {key!r} for format {fmt!r} (fields present: {sorted(rec)})")
    value = rec[key]
    if isinstance(value, (dict, list)) or value is None:
        raise ValueError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return str(value)


def _parse_fields(rec: dict, where: str) -> Example:
    return Example(*(_field(rec, k, where, "fields") for k in ("prompt", "cot", "answer")))


def _parse_gsm8k(rec: dict, where: str) -> Example:
    question = _field(rec, "question", where, "gsm8k")
    solution = _field(rec, "answer", where, "gsm8k")
    cut = solution.rfind("####")
    if cut < 0:
        raise ValueError(f"{where}: GSM8K answer has no final '#### x' line")
    return Example(prompt=question, cot=solution[:cut].rstrip("\n"), answer=solution[cut + 4 :].strip())


def _parse_think(rec: dict, where: str) -> Example:
    if "messages" in rec:
        prompt, completion = _from_messages(rec["messages"], where)
    else:
        prompt = _field(rec, _first_key(rec, _PROMPT_KEYS, where, "prompt"), where, "think")
        completion = _field(rec, _first_key(rec, _COMPLETION_KEYS, where, "completion"), where, "think")
    body, found, answer = completion.partition("</think>")
    if not found:
        raise ValueError(f"{where}: completion has no '</think>' closing the reasoning")
    body = body.strip()
    if body.startswith("<think>"):
        body = body[len("<think>") :]
    return Example(prompt=prompt, cot=body.strip(), answer=answer.strip())


def _first_key(rec: dict, keys: tuple[str, ...], where: str, what: str) -> str:
    for key in keys:
        if key in rec:
            return key
    raise ValueError(
        f"{where}: missing a {what} field (one of {', '.join(keys)}) for format 'think'; has {sorted(rec)}"
    )


def _from_messages(messages: Any, where: str) -> tuple[str, str]:
    if not isinstance(messages, list):
        raise ValueError(f"{where}: 'messages' must be a list of {{role, content}}")
    by_role = {m.get("role"): m.get("content") for m in messages if isinstance(m, dict)}
    if not isinstance(by_role.get("user"), str) or not isinstance(by_role.get("assistant"), str):
        raise ValueError(f"{where}: 'messages' needs a user and an assistant message with string content")
    return by_role["user"], by_role["assistant"]


_PARSERS = {"fields": _parse_fields, "gsm8k": _parse_gsm8k, "think": _parse_think}


DATA_SOURCES = SourceTable("data")
DATA_SOURCES.add(Source("jsonl-file", lambda spec: Path(spec).expanduser().is_file(), _load_file, ""))
DATA_SOURCES.add(Source("jsonl-folder", lambda spec: Path(spec).expanduser().is_dir(), _load_folder, ""))
