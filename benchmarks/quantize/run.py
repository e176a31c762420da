"""Every CPU quantization scheme of the quantize stage on one model, through the stage itself.

For each scheme: bytes on disk, accuracy (greedy exact match on the demo task's eval problems)
and batch-1 decode latency (32 new tokens, 5 interleaved rounds after a warm-up), each against
the scheme's own input: the HF model for torch-side schemes, its ONNX export (made by the export
stage) for ort_* schemes. Writes results.json (one row per scheme) and results.md.

    python benchmarks/quantize/run.py --model builtin:arith-teacher --eval 64 --threads 1

Figures come from whatever machine runs it; on a shared CPU, latency ratios (measured
interleaved) are more trustworthy than absolute milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
SCHEMES = ["int8_weight_only", "int8_dynamic", "bnb_int8", "bnb_nf4", "ort_int8_dynamic", "ort_int8_static", "ort_int4"]
KEYS = [
    "input_bytes",
    "bytes",
    "bytes_ratio",
    "input_accuracy",
    "accuracy",
    "accuracy_delta",
    "input_latency_ms_median",
    "latency_ms_median",
    "latency_ratio",
    "slower_than_input",
]


def stage_input(artifact: Path, data, work: Path):
    from slm_toolkit.stage import StageInput

    work.mkdir(parents=True)
    return StageInput(
        artifact=artifact, model=artifact, data=data, workdir=work, run_dir=work.parent, device="cpu", seed=0
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin:arith-teacher")
    p.add_argument("--eval", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--schemes", default=",".join(SCHEMES))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = p.parse_args()

    import torch

    from slm_toolkit.data.loaders import load_data
    from slm_toolkit.export.config import ExportConfig
    from slm_toolkit.export.stage import run as export
    from slm_toolkit.models.resolve import resolve_model
    from slm_toolkit.quantize.config import QuantizeConfig
    from slm_toolkit.quantize.stage import run as quantize

    torch.set_num_threads(args.threads)
    model = resolve_model(args.model, task={})
    data = load_data("builtin:arith-cot", "auto", 64, args.eval, seed=0, task={})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        onnx = export(ExportConfig(format="onnx"), stage_input(model, data, root / "export")).artifact
        for scheme in args.schemes.split(","):
            src = onnx if scheme.startswith("ort_") else model
            t0 = time.perf_counter()
            out = quantize(
                QuantizeConfig(scheme=scheme, limit=None, calibration={"samples": 64}),
                stage_input(src, data, root / scheme),
            )
            row = {"scheme": scheme, **{k: out.metrics[k] for k in KEYS}, "stage_s": time.perf_counter() - t0}
            rows.append(row)
            print(json.dumps(row), flush=True)
    from slm_toolkit.core.artifacts import read_meta

    meta = {
        "model": str(args.model),
        "model_builtin": read_meta(model).get("builtin"),
        "eval": args.eval,
        "threads": args.threads,
        "cpu": _cpu(),
        "torch": torch.__version__,
    }
    write(args.out, meta, rows)
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return "unknown"


def write(folder: Path, meta: dict, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"model `{meta['model']}`, {meta['eval']} eval problems, {meta['threads']} thread(s), {meta['cpu']}",
        "",
        "| scheme | MB in → out | ×bytes | accuracy in → out | Δ | batch-1 latency in → out (ms) | ×latency | slower |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scheme']} | {r['input_bytes'] / 1e6:.2f} → {r['bytes'] / 1e6:.2f} | {r['bytes_ratio']:.2f} | "
            f"{r['input_accuracy']:.3f} → {r['accuracy']:.3f} | {r['accuracy_delta']:+.3f} | "
            f"{r['input_latency_ms_median']:.0f} → {r['latency_ms_median']:.0f} | {r['latency_ratio']:.2f} | "
            f"{'yes' if r['slower_than_input'] else 'no'} |"
        )
    (folder / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
