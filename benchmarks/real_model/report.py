"""results.md and results.png from the rows and raw.json (run.py calls `write`).

Text after a line starting with "## Serving" in an existing results.md is kept: the serving
check (lm-eval through `slm serve`) records its figures there.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

KEEP_FROM = "## Serving"


def _get(rows: list[dict], model: str, runtime: str, threads: int) -> dict | None:
    return next((r for r in rows if (r["model"], r["runtime"], r["threads"]) == (model, runtime, threads)), None)


def _fmt(v: Any, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(target, measured, wanted, verdict) for each of the issue's targets the rows can answer."""
    out = []

    def add(name: str, value: float | None, wanted: str, ok: bool | None) -> None:
        verdict = "—" if value is None else ("met" if ok else "missed")
        out.append((name, _fmt(value, ".3g"), wanted, verdict))

    t, h = _get(rows, "teacher", "slm_torch_fp32", 1), _get(rows, "healed_full", "slm_torch_fp32", 1)
    if t and h:
        speed = h["decode_tok_s"] / t["decode_tok_s"]
        add("healed_full / teacher decode (slm_torch_fp32, 1 thread)", speed, ">= 1.6", speed >= 1.6)
        if h["ppl_cot"] and t["ppl_cot"]:
            r = h["ppl_cot"] / t["ppl_cot"]
            add("healed_full / teacher ppl_cot", r, "<= 1.3", r <= 1.3)
    p, tr = _get(rows, "pruned", "slm_torch_fp32", 1), _get(rows, "healed_trunc", "slm_torch_fp32", 1)
    if p and h and tr and p["ppl_cot"] and h["ppl_cot"] and tr["ppl_cot"]:
        full_gap = math.log(p["ppl_cot"]) - math.log(h["ppl_cot"])
        closed = (math.log(p["ppl_cot"]) - math.log(tr["ppl_cot"])) / full_gap if full_gap else None
        add(
            "truncated healing: share of full healing's log-ppl gain",
            closed,
            ">= 0.9",
            closed is not None and closed >= 0.9,
        )
        for key in ("train_flops", "train_cpu_s", "peak_memory_mb"):
            if h.get(key) and tr.get(key):
                r = tr[key] / h[key]
                add(f"truncated / full {key}", r, "<= 0.6", r <= 0.6)
    for model, fp32 in (("teacher", ("teacher", "slm_ort_fp32")), ("student", ("healed_full", "slm_ort_fp32"))):
        base = _get(rows, *fp32, 1)
        for fmt, limit in (("int8", 1.02), ("int8w", 1.02), ("int4", 1.05)):
            q = _get(rows, "teacher" if model == "teacher" else fmt, f"slm_ort_{fmt}", 1)
            if base and q and base["ppl_cot"] and q["ppl_cot"]:
                r = q["ppl_cot"] / base["ppl_cot"]
                add(f"{model} {fmt} / fp32 ppl_cot (ONNX)", r, f"<= {limit}", r <= limit)
    for threads in (1, 2):
        ours = _get(rows, "teacher", "slm_ort_int4", threads)
        for peer in ("llama_cpp", "ort_genai_int4"):
            other = _get(rows, "teacher", peer, threads)
            if ours and other:
                r = ours["decode_tok_s"] / other["decode_tok_s"]
                add(f"slm_ort_int4 / {peer} decode, {threads} thread(s)", r, ">= 1.0", r >= 1.0)
        other = _get(rows, "teacher", "llama_cpp", threads)
        if ours and other:
            r = ours["prefill_ms"] / other["prefill_ms"]
            add(f"slm_ort_int4 / llama_cpp prefill time, {threads} thread(s)", r, "<= 1.0", r <= 1.0)
    return out


def markdown(rows: list[dict[str, Any]], raw: dict[str, Any]) -> str:
    s = raw["settings"]
    lines = [
        "# Real model: SmolLM2-135M-Instruct on GSM8K",
        "",
        f"Batch 1; prefill on a {s['prompt_len']}-token prompt; decode {s['new_tokens']} tokens; median of "
        f"{s['rounds']} interleaved rounds (spread = p75 - p25). ppl_cot / ppl_answer on the first {s['ppl_n']} "
        f"GSM8K test problems (teacher-forced); agreement with the teacher's greedy tokens and exact match on "
        f"the first {s['em_n']} problems, up to {s['max_new']} new tokens. Wall time {raw['wall_s'] / 60:.1f} min.",
        "",
        "| model | runtime | threads | params | MB | ppl_cot | ppl_answer | agreement | exact match | decode tok/s | "
        "prefill ms | train PFLOP | train CPU s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sp = raw["speed"][str(r["threads"])][f"{r['model']}/{r['runtime']}"]
        flops = None if r["train_flops"] is None else r["train_flops"] / 1e15
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['threads']} | {r['params'] / 1e6:.1f}M | {r['bytes'] / 1e6:.0f} | "
            f"{_fmt(r['ppl_cot'], '.3f')} | {_fmt(r['ppl_answer'], '.3f')} | {_fmt(r['agreement'], '.3f')} | "
            f"{_fmt(r['exact_match'], '.3f')} | {r['decode_tok_s']:.1f} ± {sp['decode_tok_s']['spread']:.1f} | "
            f"{r['prefill_ms']:.0f} ± {sp['prefill_ms']['spread']:.0f} | {_fmt(flops, '.3g')} | "
            f"{_fmt(r['train_cpu_s'], '.0f')} | {_fmt(r['peak_memory_mb'], '.0f')} |"
        )
    if raw.get("skipped"):
        lines += ["", "Not measured: " + "; ".join(f"{k} ({v})" for k, v in raw["skipped"].items()) + "."]
    lines += ["", "## Targets", "", "| target | measured | wanted | verdict |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in targets(rows)]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(
        {(r["model"], r["runtime"]) for r in rows},
        key=lambda k: [r for r in rows].index(next(r for r in rows if (r["model"], r["runtime"]) == k)),
    )
    threads = sorted({r["threads"] for r in rows})
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 0.35 * len(names) + 2.5), constrained_layout=True)
    y = range(len(names))
    width = 0.8 / len(threads)
    for i, t in enumerate(threads):
        vals = [(_get(rows, m, rt, t) or {}).get("decode_tok_s") or 0 for m, rt in names]
        a.barh([v + i * width for v in y], vals, height=width, label=f"{t} thread(s)")
    a.set_yticks([v + 0.4 - width / 2 for v in y], [f"{m} / {rt}" for m, rt in names], fontsize=8)
    a.invert_yaxis()
    a.set_xlabel("decode tok/s (batch 1)")
    a.legend()
    a.grid(True, axis="x", alpha=0.3)
    pts = [
        (r["bytes"] / 1e6, r["ppl_cot"], f"{r['model']} / {r['runtime']}")
        for r in rows
        if r["threads"] == threads[0] and r["ppl_cot"]
    ]
    for x, v, label in pts:
        b.scatter([x], [v])
        b.annotate(label, (x, v), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if pts and max(p[0] for p in pts) / min(p[0] for p in pts) > 10:
        b.set_xscale("log")
    b.set_xlabel("size on disk (MB)")
    b.set_ylabel("perplexity, CoT (GSM8K test)")
    b.grid(True, alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path, rows: list[dict[str, Any]], raw: dict[str, Any]) -> None:
    md = out / "results.md"
    kept = ""
    if md.is_file():
        text = md.read_text()
        if KEEP_FROM in text:
            kept = "\n" + text[text.index(KEEP_FROM) :]
    md.write_text(markdown(rows, raw) + kept)
    if rows:
        plot(rows, out / "results.png")
