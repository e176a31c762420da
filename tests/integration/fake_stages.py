"""A throwaway stage for pipeline tests: no model, no torch work, controllable by env vars.

`FAKE_SLEEP` (seconds, read at run time so it is not part of the stage key) makes a stage slow,
so a test can SIGKILL it mid-stage; the stage writes `started` and a `checkpoint` file into its
workdir first, and reports `resumed=1` when it finds the checkpoint of an earlier, killed run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from slm_toolkit.registry import ANY, StageSpec
from slm_toolkit.stage import StageInput, StageOutput


class FakeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: int = 0
    fail: bool = False
    produce: bool = True  # False: return the input artifact unchanged (like evaluate)
    slow: bool = False  # sleep FAKE_SLEEP seconds (default 0) in the middle of the stage


def run(cfg: FakeConfig, inp: StageInput) -> StageOutput:
    resumed = (inp.workdir / "checkpoint").is_file()
    (inp.workdir / "started").write_text(str(os.getpid()))
    (inp.workdir / "checkpoint").write_text("step 1")
    if cfg.slow:
        time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    if cfg.fail:
        raise RuntimeError(f"fake stage asked to fail (value {cfg.value})")
    parent = Path(inp.artifact) / "weights.txt" if inp.artifact else None
    text = parent.read_text() if parent and parent.is_file() else ""
    metrics = {
        "accuracy": 0.5 + cfg.value / 100,
        "params": 1000.0 * (cfg.value + 1),
        "bytes": 2e6 * (cfg.value + 1),
        "latency_ms_median": 1.5,
        "resumed": float(resumed),
        "history": float(len(inp.history)),
    }
    extra = {"report_md": f"fake stage value {cfg.value}\n"}
    if not cfg.produce:
        return StageOutput(artifact=inp.artifact, metrics=metrics, extra=extra)
    (inp.workdir / "weights.txt").write_text(text + f"{cfg.value}\n")
    (inp.workdir / "config.json").write_text("{}")
    return StageOutput(artifact=inp.workdir, metrics=metrics, timings={"train_s": 0.01}, extra=extra)


SPEC = StageSpec(
    "fake", "fake_stages:FakeConfig", "fake_stages:run", accepts=ANY, test_module="tests/integration/test_pipeline.py"
)


def register() -> None:
    from slm_toolkit.registry import STAGES

    STAGES["fake"] = SPEC


if __name__ == "__main__":  # `python fake_stages.py run recipe.yaml ...`: the CLI with `fake` registered
    import sys

    register()
    from slm_toolkit.cli import app

    sys.argv[0] = "slm"
    app()
