"""results.json -> results.md (table + target check) and results.png (retention vs speedup)."""

from __future__ import annotations

from pathlib import Path

TARGET_RETENTION, TARGET_SPEEDUP = 0.95, 1.5


def write_report(results: dict, out: Path) -> None:
    (out / "results.md").write_text(markdown(results))
    plot(results, out / "results.png")


def markdown(r: dict) -> str:
    c, u, ref = r["conditions"], r["unpruned"], r["reference_extra_epoch"]
    lines = [
        "# Pruning + healing on the demo student" + (" (SMOKE RUN: tiny sizes, not a result)" if c["smoke"] else ""),
        "",
        f"Unpruned student: builtin:arith-student (the base student) distilled from builtin:arith-teacher with the "
        f"distill stage ({_kd(c)}, {c['distill_epochs']} epoch(s) over {c['train']} examples): "
        f"accuracy **{u['accuracy']:.3f}** on {c['eval']} eval problems, "
        f"{u['params']:,} parameters, batch-1 decode {u['latency_ms']:.1f} ms for {c['latency_new_tokens']} tokens "
        f"(IQR {u['latency_iqr_ms']:.1f}).",
        f"Reference: the unpruned student given the same extra distill epoch as the healed models reaches "
        f"{ref['accuracy']:.3f} (retention {ref['retention']:.2f}); retention below is healed ÷ unpruned, as the issue defines it.",
        "",
        f"Healing: the distill stage on the pruned folder, {_heal(c)} ('short'); 'long' heals the same pruned model "
        f"with {c.get('long_heal_epochs', 0)} epoch(s) over all {c['train']} examples (the unpruned student's own budget).",
        "",
        "| config | importance | shape (layers, heads/KV, MLP) | params | accuracy pruned | healed (short) | retention | "
        "healed (long) | retention (long) | decode ms median (IQR) | speedup (median) | speedup (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        hit = _best_retention(row) >= TARGET_RETENTION and row["speedup"] >= TARGET_SPEEDUP
        long_acc = f"{row['accuracy_healed_long']:.3f}" if "accuracy_healed_long" in row else "—"
        long_ret = f"{row['retention_long']:.2f}" if "retention_long" in row else "—"
        if _long_failed(row):
            long_acc, long_ret = "diverged†", "—"
        elif "long_heal_diverged_at_lr" in row:
            long_acc += "†"
        lines.append(
            f"| {row['config']} | {row['importance']} | {row['layers']}, {row['heads']}/{row['kv_heads']}, "
            f"{row['intermediate_size']} | {row['params']:,} ({row['params'] / row['params_unpruned']:.0%}) | "
            f"{row['accuracy_pruned']:.3f} | {row['accuracy_healed']:.3f} | {row['retention']:.2f} | {long_acc} | "
            f"{long_ret} | {row['latency_ms']:.1f} ({row['latency_iqr_ms']:.1f}) | ×{row['speedup']:.2f}{' ✓' if hit else ''} | ×{row.get('speedup_min', float('nan')):.2f} |"
        )
    for x in (x for x in r["rows"] if "long_heal_diverged_at_lr" in x):
        lines += [
            "",
            f"† {x['config']}/{x['importance']}: the long healing went to a NaN loss (the distill stage "
            "saved NaN weights without failing) at lr "
            + f"{r['conditions']['lr']:g}"
            + (
                f" and again at the one retry at lr {x['long_heal_lr']:g}; no long-healing figure for it."
                if _long_failed(x)
                else f"; the figure is from the one retry at lr {x['long_heal_lr']:g}."
            ),
        ]
    hits = [x for x in r["rows"] if _best_retention(x) >= TARGET_RETENTION and x["speedup"] >= TARGET_SPEEDUP]
    best = max(r["rows"], key=lambda x: (_best_retention(x) >= TARGET_RETENTION, x["speedup"]), default=None)
    lines += [
        "",
        f"**Target** (retention ≥ {TARGET_RETENTION} after healing and ≥ {TARGET_SPEEDUP}× faster decode): "
        + (
            f"met by {', '.join(x['config'] + '/' + x['importance'] for x in hits)}."
            if hits
            else "not met by any configuration in this run"
            + (
                f"; the fastest configuration keeping ≥ {TARGET_RETENTION} is {best['config']}/{best['importance']} "
                f"(×{best['speedup']:.2f})."
                if best and _best_retention(best) >= TARGET_RETENTION
                else "."
            )
        ),
    ]
    lines += [
        "",
        "## Conditions",
        "",
        f"- Data: builtin:arith-cot, {c['train']} training examples, {c['eval']} eval; calibration "
        f"{c['calibration_samples']} training examples.",
        f"- Latency: batch-1 greedy decode of {c['latency_new_tokens']} tokens (PyTorch, fp32, KV cache, "
        f"{c['torch_threads']} thread(s)), every model and the unpruned student in round-robin for "
        f"{c['latency_rounds']} rounds in one process; speedup (median) = unpruned median ÷ pruned median (the target is judged on it); speedup (min) = "
        "ratio of the fastest runs, steadier on a shared CPU where other jobs only add time.",
        f"- Machine: {c['cpu_count']} CPUs ({c['machine']}), shared with other jobs while this ran "
        f"(load average at the end {', '.join(f'{x:.1f}' for x in c['loadavg_at_end'])}). The run resumes from "
        f"its saved cells: started {c.get('started_utc') or '?'} UTC, the latency pass (last, "
        f"{c['wall_s'] / 60:.1f} min of the final invocation) finished {c['finished_utc']} UTC. "
        f"Teacher and base student: the cached builtin folders named in results.json (teacher held-out "
        f"accuracy {((c.get('teacher_meta') or {}).get('metrics') or {}).get('accuracy', float('nan')):.3f}).",
        "- 'depth25' drops round(25% × 3) = 1 of the student's 3 layers (33%), chosen by block angular distance: "
        "the width criterion plays no part, so its three rows are the same model healed alike, and the spread "
        "of their speedups is the latency noise of this run. 'heads25' rounds 25% of the student's 2 KV heads "
        "to 1 group (50% of the attention heads).",
        f"- One seed per cell (one problem = {1 / c['eval']:.3f} of accuracy); the seed-to-seed spread of "
        "healing was not measured, so small differences between criteria are not conclusive.",
        "",
    ]
    return "\n".join(lines)


def _long_failed(row: dict) -> bool:
    import math

    return "long_heal_final_loss" in row and not math.isfinite(row["long_heal_final_loss"])


def _best_retention(row: dict) -> float:
    return max(row["retention"], 0.0 if _long_failed(row) else row.get("retention_long", 0.0))


def _heal(c: dict) -> str:
    return (
        f"{c['heal_epochs']} epoch(s) over the first {c.get('heal_limit') or c['train']} training examples ({_kd(c)})"
    )


def _kd(c: dict) -> str:
    cut = "full sequences" if c.get("truncate", 0.5) >= 1 else f"{c['truncate']:.0%} head truncation"
    return f"forward KL, offline top-16 teacher cache, CoT + answer supervised, {cut}, batch 32, lr {c['lr']}"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    markers = {"magnitude": "o", "taylor": "s", "activation": "^"}
    colors = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(x["config"] for x in r["rows"]))}
    for x in r["rows"]:
        ax1.scatter(
            x["speedup"],
            x["retention"],
            marker=markers.get(x["importance"], "o"),
            color=colors[x["config"]],
            s=60,
            label=f"{x['config']} / {x['importance']}",
        )
        if "retention_long" in x and not _long_failed(x):  # hollow: the same model after the long healing
            ax1.scatter(
                x["speedup"],
                x["retention_long"],
                marker=markers.get(x["importance"], "o"),
                s=60,
                facecolors="none",
                edgecolors=colors[x["config"]],
            )
    ax1.axhline(TARGET_RETENTION, ls="--", c="gray")
    ax1.axvline(TARGET_SPEEDUP, ls="--", c="gray")
    ax1.set_xlabel("batch-1 decode speedup vs unpruned (×)")
    ax1.set_ylabel("retention (healed ÷ unpruned accuracy)")
    ax1.set_title("target: upper right of the dashed lines (hollow: long healing)")
    ax1.legend(fontsize=7)
    labels = [f"{x['config']}\n{x['importance']}" for x in r["rows"]]
    pos = range(len(labels))
    ax2.bar([p - 0.27 for p in pos], [x["accuracy_pruned"] for x in r["rows"]], 0.27, label="right after pruning")
    ax2.bar(list(pos), [x["accuracy_healed"] for x in r["rows"]], 0.27, label="after healing (short)")
    ax2.bar(
        [p + 0.27 for p in pos],
        [0.0 if _long_failed(x) else x.get("accuracy_healed_long", 0.0) for x in r["rows"]],
        0.27,
        label="after healing (long)",
    )
    ax2.axhline(r["unpruned"]["accuracy"], c="k", ls="--", label="unpruned")
    ax2.set_xticks(list(pos), labels, rotation=60, fontsize=6, ha="right")
    ax2.set_ylabel("exact-match accuracy")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
