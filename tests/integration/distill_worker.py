"""Runs the distill stage in a fresh process (for the kill/resume and torchrun tests).

    python distill_worker.py <tmp> <workdir name> <config json> <out json> [kill_after_step]

With kill_after_step, the process SIGKILLs itself when that step starts (mid-training, after
the last checkpoint before it).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)

from distill_helpers import tiny_input  # noqa: E402

from slm_toolkit.distill import trainer  # noqa: E402
from slm_toolkit.distill.config import DistillConfig  # noqa: E402
from slm_toolkit.distill.stage import run  # noqa: E402


def main() -> None:
    tmp, workdir, cfg_json, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
    kill_after = int(sys.argv[5]) if len(sys.argv) > 5 else None
    if kill_after is not None:
        real = trainer._one_step

        def one_step(module, step, *args, **kw):
            if step.index == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(module, step, *args, **kw)

        trainer._one_step = one_step
    wrapped = []
    real_wrap = trainer.wrap

    def wrap(*args, **kw):  # record how the student was wrapped (DDP, FSDP or not at all)
        module = real_wrap(*args, **kw)
        wrapped.append(type(module).__name__)
        return module

    trainer.wrap = wrap
    inp, student = tiny_input(tmp, n_train=48, workdir=workdir)
    cfg = DistillConfig.model_validate(json.loads(cfg_json) | {"student": str(student)})
    result = run(cfg, inp)
    if int(os.environ.get("RANK", "0")) == 0:
        out.write_text(json.dumps({"metrics": result.metrics, "wrapper": wrapped[0]}))


if __name__ == "__main__":
    main()
