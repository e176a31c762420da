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


def _per_round(a: dict | None, b: dict | None, what: str) -> list[float]:
    """Round-by-round ratios a/b (both measured back to back in the same round, so drift of a
    shared machine cancels): decode rates, prefill times, or a's rate / the round's bound."""
    if not a or "round_t1_s" not in a or (b is not None and "round_t1_s" not in b):
        return []
    n = (a["batch"]) * (a["new_tokens"] - 1)
    rate = lambda r, i: n / (r["round_tn_s"][i] - r["round_t1_s"][i])  # noqa: E731
    out = []
    for i in range(len(a["round_t1_s"])):
        if what == "decode":
            out.append(rate(a, i) / rate(b, i))
        elif what == "prefill":
            out.append(a["round_t1_s"][i] / b["round_t1_s"][i])
        else:  # bound: the round's own bandwidth sample
            out.append(rate(a, i) / (a["batch"] * a["round_bandwidth_gb_s"][i] * 1e9 / a["bytes"]))
    return out


def targets(rows) -> list[str]:
    """The issue's targets on llama_134m, batch 1, one thread: the median of the round-by-round
    ratios (p25-p75), and the ratio of the medians beside it."""
    import statistics

    get = lambda v: _row(rows, model="llama_134m", variant=v, batch=1, threads=1)  # noqa: E731
    rate = lambda v: (get(v) or {}).get("decode_tok_s")  # noqa: E731
    pre = lambda v: (get(v) or {}).get("prefill_ms")  # noqa: E731
    checks = []

    def ratio(a, b):
        return None if a is None or b is None else a / b

    def check(name, a, b, what, goal, ok):
        rounds = _per_round(get(a), get(b) if b else None, what)
        if what == "decode":
            whole = ratio(rate(a), rate(b))
        elif what == "prefill":
            whole = ratio(pre(a), pre(b))
        else:
            whole = ratio(rate(a), (get(a) or {}).get("bound_tok_s"))
        value = statistics.median(rounds) if rounds else whole
        spread = ""
        if len(rounds) > 1:
            q = statistics.quantiles(rounds, n=4, method="inclusive")
            spread = f" ({q[0]:.2f}–{q[2]:.2f})"
        status = "n/a" if value is None else ("met" if ok(value) else "**missed**")
        checks.append(f"| {name} | {_fmt(value, 2)}{spread} | {_fmt(whole, 2)} | {goal} | {status} |")

    check(
        "slm_ort_int4 / ort_genai_int4 decode", "slm_ort_int4", "ort_genai_int4", "decode", "≥ 1.0", lambda v: v >= 1.0
    )
    check(
        "slm_ort_int4 / hf_generate_fp32 decode", "slm_ort_int4", "hf_generate_fp32", "decode", "≥ 8", lambda v: v >= 8
    )
    check(
        "slm_ort_int4 / ort_genai_int4 prefill time",
        "slm_ort_int4",
        "ort_genai_int4",
        "prefill",
        "≤ 0.6",
        lambda v: v <= 0.6,
    )
    check(
        "slm_ort_int8 / optimum_ort_int8 decode",
        "slm_ort_int8",
        "optimum_ort_int8",
        "decode",
        "≥ 1.2",
        lambda v: v >= 1.2,
    )
    check("slm_ort_fp32 / bandwidth bound", "slm_ort_fp32", None, "bound", "≥ 0.9", lambda v: v >= 0.9)
    return [
        "## Targets (llama_134m, batch 1, 1 thread)",
        "",
        "Median of the round-by-round ratios (p25–p75): both variants ran back to back in each round, so the "
        "drift of a shared machine cancels; the ratio of the medians of the tables below is beside it.",
        "",
        "| target | per-round ratio | ratio of medians | goal | |",
        "|---|---|---|---|---|",
        *checks,
        "",
    ]


def _rounds(rows, args) -> str:
    counts = sorted({r.get("repeats", args.repeats) for r in rows})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]} (per row: `repeats` in results.json)"


def markdown(rows, args) -> str:
    lines = [
        "# Inference benchmark",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores visible; "
        f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, {_rounds(rows, args)} interleaved rounds "
        "after a warm-up; median (p25–p75). decode tok/s = batch × (N − 1) / (T(N tokens) − T(1 token)); "
        "prefill ms = T(1 token), per-request set-up included. bound = batch × measured read bandwidth "
        "(median of one sample per round, interleaved with the variants) ÷ weight bytes read per token "
        "(embedding rows excluded). Command: "
        "`python benchmarks/inference/run.py` (see --help).",
        "",
    ]
    if args.note:
        lines += [f"**Note:** {args.note}", ""]
    lines += targets(rows)
    for model in dict.fromkeys(r["model"] for r in rows):
        for threads in sorted({r["threads"] for r in rows if r["model"] == model}):
            for batch in sorted({r["batch"] for r in rows if r["model"] == model}):
                sel = [r for r in rows if r["model"] == model and r["threads"] == threads and r["batch"] == batch]
                lines += [
                    f"## {model}, batch {batch}, {threads} thread(s)",
                    "",
                    "| variant | decode tok/s | prefill ms | weight bytes/token | bound tok/s | % of bound |",
                    "|---|---|---|---|---|---|",
                ]
                for r in sel:
                    if r.get("decode_tok_s") is None:
                        lines.append(
                            f"| {r['variant']} | — | — | {r['bytes'] / 1e6:.1f} MB | "
                            f"{_fmt(r['bound_tok_s'])} | unavailable: {r.get('error', '')} |"
                        )
                        continue
                    lines.append(
                        f"| {r['variant']} | {_fmt(r['decode_tok_s'])} ({_fmt(r['decode_tok_s_p25'])}–"
                        f"{_fmt(r['decode_tok_s_p75'])}) | {_fmt(r['prefill_ms'])} ({_fmt(r['prefill_ms_p25'])}–"
                        f"{_fmt(r['prefill_ms_p75'])}) | {r['bytes'] / 1e6:.1f} MB | {_fmt(r['bound_tok_s'])} | "
                        f"{100 * r['decode_tok_s'] / r['bound_tok_s']:.0f}% |"
                    )
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
