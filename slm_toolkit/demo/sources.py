"""The demo world's sources, registered into the library's tables through the entry point

    [project.entry-points."slm_toolkit.sources"]
    demo = "slm_toolkit.demo.sources:register"

- model specs `builtin:arith-teacher` / `builtin:arith-student` (trained on first use, cached;
  slm_toolkit.demo.builtin);
- the data spec `builtin:arith-cot`: the demo task's problems (slm_toolkit.demo.task), train and
  eval from different seeds, eval never repeating a training prompt.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from slm_toolkit.core.sources import Source, prefix
from slm_toolkit.data.config import DemoTaskConfig
from slm_toolkit.data.example import DataBundle, Example
from slm_toolkit.data.loaders import DATA_SOURCES
from slm_toolkit.demo.builtin import builtin_model
from slm_toolkit.demo.task import generate_examples
from slm_toolkit.models.resolve import MODEL_SOURCES

PREFIX = "builtin:"
DEMO_DATA = "builtin:arith-cot"
_EVAL_SEED_OFFSET = 1_000_003  # the eval stream's seed: never the training seed


def register() -> None:
    """Add the demo's rows to the model and data tables (called once by core.sources)."""
    MODEL_SOURCES.add(
        Source("demo-builtin", prefix(PREFIX), _builtin_model, "builtin:arith-teacher, builtin:arith-student")
    )
    DATA_SOURCES.add(Source("demo-builtin", prefix(PREFIX), load_demo_data, DEMO_DATA, check=check_demo_data))


def _builtin_model(request: Any) -> Path:
    return builtin_model(request.spec[len(PREFIX) :], task=request.task, seed=request.seed, progress=request.progress)


def check_demo_data(source: str) -> None:
    if source != DEMO_DATA:
        raise ValueError(f"unknown builtin data {source!r}; the builtin task is {DEMO_DATA}")


def load_demo_data(source: str, *, fmt: str, n_train: int, n_eval: int, seed: int, task: dict) -> DataBundle:
    """The demo task's train and eval examples for the recipe's `data.task` knobs."""
    check_demo_data(source)
    cfg = DemoTaskConfig(**(task or {})).model_dump()
    train, eval_ = demo_split(n_train, n_eval, seed, cfg)
    return DataBundle(train=train, eval=eval_, source=source, options={"task": cfg, "seed": seed})


def demo_split(n_train: int, n_eval: int, seed: int, task: dict) -> tuple[list[Example], list[Example]]:
    """Demo train/eval; eval comes from another seed and never repeats a training prompt."""
    train = generate_examples(n_train, seed, **task)
    seen = {ex.prompt for ex in train}
    eval_: list[Example] = []
    for attempt in range(20):
        batch = generate_examples(max(2 * n_eval, 64), seed + _EVAL_SEED_OFFSET * (attempt + 1), **task)
        for ex in batch:
            if ex.prompt not in seen and len(eval_) < n_eval:
                seen.add(ex.prompt)
                eval_.append(ex)
        if len(eval_) == n_eval:
            return train, eval_
    if not eval_:
        raise ValueError(
            f"the demo task {task} has no problems left for eval after {n_train} training problems; "
            "it has too few distinct problems: raise steps or digits, or lower data.train"
        )
    warnings.warn(
        f"the demo task {task} has only {len(eval_)} problems outside the training set; "
        f"eval uses {len(eval_)} instead of {n_eval}",
        stacklevel=2,
    )
    return train, eval_
