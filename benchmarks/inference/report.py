"""results.md (tables + the issue's targets) and results.png from the benchmark's rows."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _fmt(x, digits=1):
    return "—" if x is None else f"{x:.{digits}f}"


def _row(rows, **key):
    for r in rows:
        if all(r.get(k) == v for k, v in key.items()):
            return r
    return None


def targets(rows) -> list[str]:
    """The issue's targets on llama_134m, batch 1, one thread."""
    get = lambda v: _row(rows, model="llama_134m", variant=v, batch=1, threads=1)  # noqa: E731
    rate = lambda v: (get(v) or {}).get("decode_tok_s")  # noqa: E731
    pre = lambda v: (get(v) or {}).get("prefill_ms")  # noqa: E731
    checks = []

    def check(name, value, goal, ok):
        status = "n/a" if value is None else ("met" if ok else "**missed**")
        checks.append(f"| {name} | {value if isinstance(value, str) else _fmt(value, 2)} | {goal} | {status} |")

    def ratio(a, b):
        return None if a is None or b is None else a / b

    r = ratio(rate("slm_ort_int4"), rate("ort_genai_int4"))
    check("slm_ort_int4 / ort_genai_int4 decode", r, "≥ 1.0", r is not None and r >= 1.0)
    r = ratio(rate("slm_ort_int4"), rate("hf_generate_fp32"))
    check("slm_ort_int4 / hf_generate_fp32 decode", r, "≥ 8", r is not None and r >= 8)
    r = ratio(pre("slm_ort_int4"), pre("ort_genai_int4"))
    check("slm_ort_int4 / ort_genai_int4 prefill time", r, "≤ 0.6", r is not None and r <= 0.6)
    r = ratio(rate("slm_ort_int8"), rate("optimum_ort_int8"))
    check("slm_ort_int8 / optimum_ort_int8 decode", r, "≥ 1.2", r is not None and r >= 1.2)
    fp32 = get("slm_ort_fp32")
    r = ratio(rate("slm_ort_fp32"), fp32["bound_tok_s"] if fp32 else None)
    check("slm_ort_fp32 / bandwidth bound", r, "≥ 0.9", r is not None and r >= 0.9)
    if not checks:
        return []
    return ["## Targets (llama_134m, batch 1, 1 thread)", "", "| target | measured | goal | |", "|---|---|---|---|",
            *checks, ""]


def markdown(rows, args) -> str:
    lines = ["# Inference benchmark", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores visible; "
             f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, {args.repeats} interleaved rounds "
             "after a warm-up; median (p25–p75). decode tok/s = batch × (N − 1) / (T(N tokens) − T(1 token)); "
             "prefill ms = T(1 token), per-request set-up included. bound = batch × measured read bandwidth ÷ "
             "weight bytes read per token (embedding rows excluded). Command: "
             "`python benchmarks/inference/run.py` (see --help).", ""]
    if args.note:
        lines += [f"**Note:** {args.note}", ""]
    lines += targets(rows)
    for model in dict.fromkeys(r["model"] for r in rows):
        for threads in sorted({r["threads"] for r in rows if r["model"] == model}):
            for batch in sorted({r["batch"] for r in rows if r["model"] == model}):
                sel = [r for r in rows if r["model"] == model and r["threads"] == threads and r["batch"] == batch]
                lines += [f"## {model}, batch {batch}, {threads} thread(s)", "",
                          "| variant | decode tok/s | prefill ms | weight bytes/token | bound tok/s | % of bound |",
                          "|---|---|---|---|---|---|"]
                for r in sel:
                    if r.get("decode_tok_s") is None:
                        lines.append(f"| {r['variant']} | — | — | {r['bytes'] / 1e6:.1f} MB | "
                                     f"{_fmt(r['bound_tok_s'])} | unavailable: {r.get('error', '')} |")
                        continue
                    lines.append(
                        f"| {r['variant']} | {_fmt(r['decode_tok_s'])} ({_fmt(r['decode_tok_s_p25'])}–"
                        f"{_fmt(r['decode_tok_s_p75'])}) | {_fmt(r['prefill_ms'])} ({_fmt(r['prefill_ms_p25'])}–"
                        f"{_fmt(r['prefill_ms_p75'])}) | {r['bytes'] / 1e6:.1f} MB | {_fmt(r['bound_tok_s'])} | "
                        f"{100 * r['decode_tok_s'] / r['bound_tok_s']:.0f}% |")
                lines.append("")
    return "\n".join(lines) + "\n"


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["threads"]) for r in rows if r["batch"] == 1})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4.5), squeeze=False)
    for ax, (model, threads) in zip(axes[0], groups):
        sel = [r for r in rows if r["model"] == model and r["threads"] == threads and r["batch"] == 1]
        names = [r["variant"] for r in sel]
        vals = [r["decode_tok_s"] or 0 for r in sel]
        ax.barh(names, vals, color=["tab:green" if n.startswith("slm_") else "tab:gray" for n in names])
        ax.set_title(f"{model}, batch 1, {threads} thread(s)")
        ax.set_xlabel("decode tokens/s")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
