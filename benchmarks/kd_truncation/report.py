"""results.json -> results.md (tables, targets) and retention_vs_cost.png."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def protocol(r: dict) -> str:
    if r["teacher"] == "online":
        return "online teacher"
    if r["mode"] == "keep_answer":
        return "keep_answer"
    if r["full_batches"] > 0:
        return f"full_batches {r['full_batches']:g}"
    return "paper (head)"


def summarize(rows: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["verify"], protocol(r), r["supervise"], r["fraction"], r["full_batches"], r["teacher"])].append(r)
    base = {}
    for (v, proto, sup, f, _fb, _t), rs in groups.items():
        if proto == "paper (head)" and sup == "P+CoT+A" and f == 1.0:
            base[v] = {
                k: statistics.fmean(x.get(k, float("nan")) for x in rs)
                for k in (
                    "accuracy",
                    "wall_time_s",
                    "cpu_time_s",
                    "peak_memory_mb",
                    "activation_mb",
                    "flops",
                    "step_time_s",
                )
            }
    out = []
    for (v, proto, sup, f, fb, t), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3])
    ):
        acc, acc_sd = _mean_sd([r["accuracy"] for r in rs])
        row = dict(
            verify=v,
            protocol=proto,
            supervise=sup,
            fraction=f,
            full_batches=fb,
            teacher=t,
            n=len(rs),
            accuracy=acc,
            accuracy_sd=acc_sd,
            answer_rate=statistics.fmean(r["answer_rate"] for r in rs),
            step_time_s=statistics.fmean(r["step_time_s"] for r in rs),
        )
        b = base.get(v)
        for k, name in (
            ("wall_time_s", "time"),
            ("cpu_time_s", "cpu"),
            ("peak_memory_mb", "memory"),
            ("activation_mb", "activation"),
            ("flops", "flops"),
        ):
            mean = statistics.fmean(r.get(k, float("nan")) for r in rs)
            row[f"{name}_ratio"] = mean / b[k] if b and b[k] > 0 else float("nan")
        row["retention"] = acc / b["accuracy"] if b and b["accuracy"] > 0 else float("nan")
        # spread of retention from the seeds' accuracies (baseline mean held fixed)
        row["retention_sd"] = acc_sd / b["accuracy"] if b and b["accuracy"] > 0 else float("nan")
        out.append(row)
    return out


def _table(summary: list[dict]) -> list[str]:
    lines = [
        "| verify | protocol | supervise | kept | full batches | teacher | accuracy (mean ± sd) | answer rate "
        "| retention | wall time × | CPU time × | peak mem × | activation mem × | FLOPs × | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['verify']} | {s['protocol']} | {s['supervise']} | {s['fraction']:.0%} | {s['full_batches']:g} "
            f"| {s['teacher']} | {s['accuracy']:.3f} ± {s['accuracy_sd']:.3f} | {s['answer_rate']:.2f} "
            f"| {s['retention']:.0%} ± {s['retention_sd']:.0%} | {s['time_ratio']:.2f} | {s['cpu_ratio']:.2f} "
            f"| {s['memory_ratio']:.2f} "
            f"| {s['activation_ratio']:.2f} | {s['flops_ratio']:.2f} | {s['n']} |"
        )
    return lines


def _costs(s: dict) -> str:
    return (
        f"wall time {s['time_ratio']:.2f}×, CPU time {s['cpu_ratio']:.2f}×, peak memory {s['memory_ratio']:.2f}×, "
        f"FLOPs {s['flops_ratio']:.2f}×"
    )


def targets(summary: list[dict]) -> list[str]:
    lines = []
    for v in sorted({s["verify"] for s in summary}):
        goal = 0.94 if v == 0 else 0.97
        ours = [
            s
            for s in summary
            if s["verify"] == v and s["protocol"].startswith(("full_batches", "keep")) and s["supervise"] == "P+CoT+A"
        ]
        cheap = [s for s in ours if max(s["time_ratio"], s["memory_ratio"], s["flops_ratio"]) <= 0.55]
        cheap_cpu = [s for s in ours if max(s["cpu_ratio"], s["memory_ratio"], s["flops_ratio"]) <= 0.55]
        for label, pool in (("wall time", cheap), ("CPU time", cheap_cpu)):
            if pool:
                best = max(pool, key=lambda s: s["retention"])
                met = "MET" if best["retention"] >= goal else "MISSED"
                lines.append(
                    f"- verify={v}, cells within 0.55× ({label}, memory, FLOPs): best is {best['protocol']} "
                    f"at {best['fraction']:.0%}: retention {best['retention']:.0%} ± {best['retention_sd']:.0%} "
                    f"({_costs(best)}); target ≥ {goal:.0%}: **{met}**."
                )
            else:
                lines.append(
                    f"- verify={v}: no cell of our protocols within 0.55× ({label}, memory, FLOPs); "
                    f"target ≥ {goal:.0%}: **MISSED**."
                )
        if ours:
            top = max(ours, key=lambda s: s["retention"])
            lines.append(
                f"  - best retention of our protocols at any cost: {top['protocol']} at {top['fraction']:.0%}: "
                f"{top['retention']:.0%} ± {top['retention_sd']:.0%} ({_costs(top)})."
            )
        for s in summary:
            if (
                s["verify"] == v
                and s["protocol"] == "paper (head)"
                and s["supervise"] == "P+CoT+A"
                and s["fraction"] == 0.5
            ):
                lines.append(
                    f"  - the paper's plain protocol (head, 50%, P+CoT+A): retention {s['retention']:.0%} "
                    f"± {s['retention_sd']:.0%}, answer rate {s['answer_rate']:.2f} ({_costs(s)})."
                )
    for v in sorted({s["verify"] for s in summary}):
        for f in (0.5, 1.0):
            on = [s for s in summary if s["verify"] == v and s["teacher"] == "online" and s["fraction"] == f]
            off = [
                s
                for s in summary
                if s["verify"] == v
                and s["protocol"] == "paper (head)"
                and s["supervise"] == "P+CoT+A"
                and s["fraction"] == f
            ]
            if on and off:
                r = off[0]["step_time_s"] / on[0]["step_time_s"]
                rc = off[0]["cpu_ratio"] / on[0]["cpu_ratio"]
                met = "MET" if r <= 0.5 else "MISSED"
                met_c = "MET" if rc <= 0.5 else "MISSED"
                lines.append(
                    f"- verify={v}, kept {f:.0%}: offline top-k step {off[0]['step_time_s'] * 1e3:.0f} ms vs "
                    f"online {on[0]['step_time_s'] * 1e3:.0f} ms wall → {r:.2f}× (**{met}**); by CPU time "
                    f"{rc:.2f}× (**{met_c}**) (target ≤ 0.5×); accuracy offline {off[0]['accuracy']:.3f} "
                    f"vs online {on[0]['accuracy']:.3f}."
                )
    return lines


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    curves = defaultdict(list)
    for s in summary:
        if s["supervise"] != "P+CoT+A" or s["teacher"] != "offline":
            continue
        curves[(s["protocol"], s["verify"])].append(s)
    for (proto, v), pts in sorted(curves.items()):
        full = [
            s
            for s in summary
            if s["verify"] == v
            and s["protocol"] == "paper (head)"
            and s["supervise"] == "P+CoT+A"
            and s["fraction"] == 1.0
        ]
        pts = sorted(pts + ([] if proto == "paper (head)" else full), key=lambda s: s["cpu_ratio"])
        ax.errorbar(
            [s["cpu_ratio"] for s in pts],
            [s["retention"] for s in pts],
            yerr=[s["retention_sd"] for s in pts],
            marker="o",
            capsize=3,
            linestyle="-" if v == 0 else "--",
            label=f"{proto}, verify={v}",
        )
    ax.axvline(0.55, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("CPU time of training / full-sequence KD (wall time is confounded by load, see notes)")
    ax.set_ylabel("accuracy retention vs full-sequence KD (P+CoT+A)")
    ax.set_title("Truncated KD on the demo task: retention against cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(rows: list[dict], out: Path, args: dict) -> None:
    summary = summarize(rows)
    plot(summary, out / "retention_vs_cost.png")
    settings = {
        k: args.get(k)
        for k in (
            "groups",
            "verify",
            "seeds",
            "steps",
            "batch_size",
            "lr",
            "top_k",
            "n_eval",
            "task_steps",
            "teacher_steps",
            "student_steps",
        )
    }
    notes = out / "run_notes.md"  # hand-written: what was run, any reduction and why
    text = [
        "# kd_truncation results",
        "",
        *([notes.read_text().strip(), ""] if notes.exists() else []),
        f"Settings of this run: `{settings}`; {len(rows)} cells.",
        "",
        "Retention = mean accuracy / mean accuracy of full-sequence KD (100%, P+CoT+A, offline teacher) at "
        "the same `verify`; ± is the seed-to-seed sd of accuracy divided by that baseline. Ratios (×) are "
        "means over seeds divided by the same baseline's mean, measured in this one run.",
        "",
        "## Targets",
        "",
        *targets(summary),
        "",
        "## All cells",
        "",
        *_table(summary),
        "",
        "![retention vs cost](retention_vs_cost.png)",
        "",
    ]
    (out / "results.md").write_text("\n".join(text))
