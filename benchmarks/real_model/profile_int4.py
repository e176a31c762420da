"""Where an int4 decode step's time and bytes go: ONNX Runtime's profiler on the toolkit's graph.

    python benchmarks/real_model/profile_int4.py FOLDER [FOLDER ...] [--threads 1] [--steps 32]

For each ONNX folder (e.g. the teacher's int4 built by run.py before and after a change): the
fused graph the toolkit runs (runtime/ort_fused.py) is opened with profiling on, a 128-token
prompt is prefilled and `--steps` tokens are decoded one by one. Node events are grouped by op
type and by the part of the model they belong to (embedding, lm_head, layers) over the decode
runs only (the prefill and a warm-up step are left out); bytes are the constant inputs
(weights, scales) read in full every step, each counted once; tables looked up one row per
token (the embedding's Gather, the rotary cos/sin caches of GroupQueryAttention) are left out. Prints a markdown table per folder (profile.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

LOOKUPS = {"Gather", "GatherBlockQuantized", "GroupQueryAttention"}


def part_of(node_name: str, inputs: list[str]) -> str:
    text = " ".join([node_name, *inputs]).lower()
    if "lm_head" in text or "untied_t" in text:
        return "lm_head"
    if "embed" in text:
        return "embedding"
    if "layers" in text:
        return "layers"
    return "other"


def profile(folder: Path, threads: int, steps: int) -> str:
    import onnx
    import onnxruntime as ort

    from slm_toolkit.runtime.ort_common import session_options
    from slm_toolkit.runtime.ort_fused import FusedOrtGenerator, fused_graph

    config = json.loads((folder / "config.json").read_text())
    graph = fused_graph(folder / "model.onnx", config)
    if graph is None:
        raise SystemExit(f"{folder}: the fused graph does not apply")
    model = onnx.load_from_string(graph)
    sizes = {t.name: _nbytes(t) for t in model.graph.initializer}
    node_info = {n.name: (n.op_type, [x for x in n.input if x in sizes]) for n in model.graph.node}
    opts = session_options(threads)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(folder.parent / f"ort_profile_{folder.name}")
    session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    gen = FusedOrtGenerator(session, config, {})
    _, state = gen.prefill([list(range(1000, 1128))])
    token = 0
    for _ in range(steps + 1):
        _, state = gen.decode_step([token], state)
    trace = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    runs = sorted(runs, key=lambda e: e["ts"])[2:]  # drop the prefill and one warm-up step
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in runs]
    total_us = sum(e["dur"] for e in runs)
    by_op, by_part = defaultdict(float), defaultdict(float)
    for e in trace:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        if not any(a <= e["ts"] <= b for a, b in spans):
            continue
        name = e["name"][: -len("_kernel_time")]
        op = e.get("args", {}).get("op_name") or node_info.get(name, ("?", []))[0]
        by_op[op] += e["dur"]
        by_part[part_of(name, node_info.get(name, ("", []))[1])] += e["dur"]
    bytes_op, bytes_part, seen = defaultdict(int), defaultdict(int), set()
    for name, (op, weights) in node_info.items():
        if op in LOOKUPS:  # a table read one row per token (embedding, rotary cos/sin caches)
            continue
        b = sum(sizes[w] for w in weights if w not in seen)
        seen.update(weights)
        bytes_op[op] += b
        bytes_part[part_of(name, weights)] += b
    n = max(len(runs), 1)
    lines = [
        f"### {folder} ({threads} thread(s), {len(runs)} decode steps, {total_us / n / 1000:.2f} ms/step)",
        "",
        "| part | ms/step | share | MB read/step |",
        "|---|---|---|---|",
    ]
    kernel = sum(by_part.values()) or 1.0
    for part in sorted(by_part, key=lambda p: -by_part[p]):
        lines.append(
            f"| {part} | {by_part[part] / n / 1000:.3f} | {by_part[part] / kernel:.0%} | {bytes_part[part] / 1e6:.1f} |"
        )
    lines += ["", "| op type | ms/step | share | MB weights |", "|---|---|---|---|"]
    for op in sorted(by_op, key=lambda o: -by_op[o])[:12]:
        lines.append(f"| {op} | {by_op[op] / n / 1000:.3f} | {by_op[op] / kernel:.0%} | {bytes_op[op] / 1e6:.1f} |")
    return "\n".join(lines) + "\n"


def _nbytes(t) -> int:
    if t.raw_data:
        return len(t.raw_data)
    from onnx import numpy_helper

    return int(np.asarray(numpy_helper.to_array(t)).nbytes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--out", help="write the tables to this markdown file too")
    args = ap.parse_args(argv)
    text = "\n".join(profile(Path(f), args.threads, args.steps) for f in args.folders)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
