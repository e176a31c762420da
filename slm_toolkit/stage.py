"""The stage contract: run(cfg, StageInput) -> StageOutput.

A stage receives its own validated config (a pydantic model) and this input, writes only
inside `workdir`, and returns the new artifact (or the same one, for evaluate/bench), a flat
dict of numeric metrics and timings. Stages never call each other and never read the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from slm_toolkit.data.example import DataBundle


@dataclass
class StageRecord:
    """What an earlier stage of this run left (read-only for later stages, e.g. for reports)."""

    index: int
    name: str
    artifact: Path | None
    metrics: dict[str, float]


@dataclass
class StageInput:
    artifact: Path | None  # the previous stage's artifact (for the first stage: the recipe's model)
    model: Path  # the recipe's `model`, resolved to a local folder (the teacher / reference)
    data: DataBundle
    workdir: Path  # this stage's temporary folder; renamed into place by the pipeline on success
    run_dir: Path
    device: str  # "cpu" or "cuda"
    seed: int
    history: list[StageRecord] = field(default_factory=list)
    threads: int | None = None  # CPU threads for torch and onnxruntime (the recipe's `threads`; None = per core)


@dataclass
class StageOutput:
    artifact: Path | None  # a folder inside workdir, or the unchanged input artifact
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # non-numeric results (tables, plot paths)


class StageRun(Protocol):
    def __call__(self, cfg: Any, inp: StageInput) -> StageOutput: ...
