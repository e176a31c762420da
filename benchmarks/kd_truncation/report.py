"""results.json -> results.md (targets, the must-have tables, every cell) and retention_vs_cost.png.

Retention = mean accuracy / mean accuracy of full-sequence KD (P+CoT+A, no truncation, offline
teacher) at the same `verify`; cost ratios (×) are means over seeds divided by the same
baseline's means. The budget is <= 0.6x of full KD in FLOPs, training CPU time and peak memory,
all three.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

BUDGET = 0.6
COSTS = (("flops", "flops", "FLOPs"), ("cpu_time_s", "cpu", "CPU time"), ("peak_memory_mb", "memory", "peak memory"))
DEFAULTS = {"mode": "head", "full_batches": 0.0, "schedule": "uniform", "mixing": "batch", "fraction_start": None}


def _get(r: dict, key: str):
    return r.get(key, DEFAULTS.get(key))


def truncated(r: dict) -> bool:
    """Whether a row's run truncated anything: the distill stage's own answer
    (`TruncateConfig.active`) for the row's `truncate` keys (fraction 1.0 = none set)."""
    from slm_toolkit.distill.config import TruncateConfig

    return TruncateConfig(fraction=r["fraction"] if r["fraction"] < 1.0 else None).active


def protocol(r: dict) -> str:
    """A readable name for the row's protocol (everything but supervise and the kept fraction)."""
    if r.get("teacher", "offline") == "online":
        return "online teacher" + ("" if truncated(r) else " (full)")
    if not truncated(r):
        return "full KD"
    parts = [] if _get(r, "mode") == "head" else [_get(r, "mode")]
    if _get(r, "fraction_start") is not None:
        parts.append(f"growing from {_get(r, 'fraction_start'):.0%}")
    if _get(r, "full_batches") > 0:
        what = "examples" if _get(r, "mixing") == "example" else f"batches {_get(r, 'schedule')}"
        parts.append(f"{_get(r, 'full_batches'):.0%} whole {what}")
    return ", ".join(parts) if parts else "paper (head)"


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(rows: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["verify"], protocol(r), r["supervise"], r["fraction"])].append(r)
    base = {}
    for (v, proto, sup, _f), rs in groups.items():
        if proto == "full KD" and sup == "P+CoT+A":
            base[v] = {
                k: statistics.fmean(x[k] for x in rs) for k in ("accuracy", "wall_time_s", *(c[0] for c in COSTS))
            }
    out = []
    for (v, proto, sup, f), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3])):
        acc, acc_sd = _mean_sd([r["accuracy"] for r in rs])
        b = base.get(v)
        row = dict(
            verify=v,
            protocol=proto,
            supervise=sup,
            fraction=f,
            n=len(rs),
            accuracy=acc,
            accuracy_sd=acc_sd,
            answer_rate=statistics.fmean(r["answer_rate"] for r in rs),
            retention=acc / b["accuracy"] if b and b["accuracy"] > 0 else float("nan"),
            retention_sd=acc_sd / b["accuracy"] if b and b["accuracy"] > 0 else float("nan"),
        )
        for key, name in [("wall_time_s", "time"), *((k, n) for k, n, _ in COSTS)]:
            mean = statistics.fmean(r.get(key, float("nan")) for r in rs)
            row[f"{name}_ratio"] = mean / b[key] if b and b[key] > 0 else float("nan")
        row["cost"] = max(row["flops_ratio"], row["cpu_ratio"], row["memory_ratio"])
        out.append(row)
    return out


def _costs(s: dict) -> str:
    return f"FLOPs {s['flops_ratio']:.2f}×, CPU time {s['cpu_ratio']:.2f}×, peak memory {s['memory_ratio']:.2f}×"


def _ret(s: dict) -> str:
    return f"{s['retention']:.0%} ± {s['retention_sd']:.0%}"


def targets(summary: list[dict]) -> list[str]:
    verifies = sorted({s["verify"] for s in summary})
    lines = []
    for v in verifies:
        full = [s for s in summary if s["verify"] == v and s["protocol"] == "full KD" and s["supervise"] == "P+CoT+A"]
        if full:
            met = "MET" if full[0]["accuracy"] >= 0.95 else "MISSED"
            lines.append(
                f"- verify={v}: full-sequence KD (P+CoT+A) reaches {full[0]['accuracy']:.1%} ± "
                f"{full[0]['accuracy_sd']:.1%} exact match (converged: ≥ 95%: **{met}**)."
            )
    for v in verifies:
        goal = 0.94 if v == min(verifies) else 0.97
        ours = [
            s
            for s in summary
            if s["verify"] == v and s["supervise"] == "P+CoT+A" and s["protocol"] not in ("full KD", "paper (head)")
        ]
        fits = [s for s in ours if s["cost"] <= BUDGET]
        if fits:
            best = max(fits, key=lambda s: s["retention"])
            met = "MET" if best["retention"] >= goal else "MISSED"
            lines.append(
                f"- verify={v}, best protocol within {BUDGET}× (FLOPs, CPU time and peak memory): "
                f"**{best['protocol']}** at {best['fraction']:.0%}: retention {_ret(best)} ({_costs(best)}); "
                f"target ≥ {goal:.0%}: **{met}**."
            )
        else:
            lines.append(f"- verify={v}: no protocol cell within {BUDGET}× on all three costs: **MISSED**.")
        for s in summary:
            if (
                s["verify"] == v
                and s["protocol"] == "paper (head)"
                and s["supervise"] == "P+CoT+A"
                and s["fraction"] == 0.5
            ):
                lines.append(
                    f"  - beside it, the paper's plain protocol (head, 50%, P+CoT+A): retention {_ret(s)}, "
                    f"answer rate {s['answer_rate']:.2f} ({_costs(s)})."
                )
    return lines


def _table(summary: list[dict], pick) -> list[str]:
    lines = [
        "| verify | protocol | supervise | kept | accuracy (mean ± sd) | answer rate | retention "
        "| FLOPs × | CPU time × | peak mem × | wall time × | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        if pick(s):
            lines.append(
                f"| {s['verify']} | {s['protocol']} | {s['supervise']} | {s['fraction']:.0%} "
                f"| {s['accuracy']:.3f} ± {s['accuracy_sd']:.3f} | {s['answer_rate']:.2f} | {_ret(s)} "
                f"| {s['flops_ratio']:.2f} | {s['cpu_ratio']:.2f} | {s['memory_ratio']:.2f} | {s['time_ratio']:.2f} "
                f"| {s['n']} |"
            )
    return lines


def plot(summary: list[dict], path: Path) -> None:
    """Retention against each cost (one panel per cost), one marker per protocol, P+CoT+A."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [s for s in summary if s["supervise"] == "P+CoT+A"]
    protocols = sorted({s["protocol"] for s in cells})
    verifies = sorted({s["verify"] for s in cells})
    colors = {p: plt.cm.tab20(i % 20) for i, p in enumerate(protocols)}
    markers = dict(zip(verifies, "osD^v"))
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5), sharey=True)
    for ax, (_key, name, label) in zip(axes, COSTS):
        for s in cells:
            ax.errorbar(
                s[f"{name}_ratio"],
                s["retention"],
                yerr=s["retention_sd"],
                marker=markers[s["verify"]],
                color=colors[s["protocol"]],
                capsize=2,
                linestyle="none",
            )
        for p in protocols:  # the paper's curve and each protocol's points joined, per verify
            for v in verifies:
                pts = sorted(
                    (s for s in cells if s["protocol"] == p and s["verify"] == v), key=lambda s: s[f"{name}_ratio"]
                )
                if len(pts) > 1:
                    ax.plot([s[f"{name}_ratio"] for s in pts], [s["retention"] for s in pts], color=colors[p], lw=0.8)
        ax.axvline(BUDGET, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(f"{label} / full-sequence KD")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy retention vs full-sequence KD (P+CoT+A)")
    handles = [plt.Line2D([], [], color=colors[p], marker="o", ls="none", label=p) for p in protocols]
    handles += [plt.Line2D([], [], color="k", marker=markers[v], ls="none", label=f"verify={v}") for v in verifies]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(f"Truncated KD on the demo task: retention against cost (budget {BUDGET}×, dotted)")
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict], out: Path) -> None:
    summary = summarize(rows)
    plot(summary, out / "retention_vs_cost.png")
    path = out / "settings.json"  # written by the run that produced the rows
    settings = json.loads(path.read_text()) if path.exists() else "not recorded"
    notes = out / "run_notes.md"  # hand-written after a run: what ran, reductions, what it means for users
    text = [
        "# kd_truncation results",
        "",
        *([notes.read_text().strip(), ""] if notes.exists() else []),
        f"Training settings of every cell: `{settings}`; {len(rows)} cells.",
        "",
        __doc__.split("\n\n", 1)[1].strip(),
        "",
        "## Targets",
        "",
        *targets(summary),
        "",
        "## Truncation curve (P+CoT+A, the paper's head truncation)",
        "",
        *_table(summary, lambda s: s["supervise"] == "P+CoT+A" and s["protocol"] in ("full KD", "paper (head)")),
        "",
        "## Supervision table (head truncation at 50% and none)",
        "",
        *_table(summary, lambda s: s["protocol"] in ("full KD", "paper (head)") and s["fraction"] in (0.5, 1.0)),
        "",
        "## Protocols (P+CoT+A)",
        "",
        *_table(
            summary,
            lambda s: s["supervise"] == "P+CoT+A" and (s["protocol"] != "paper (head)" or s["fraction"] == 0.5),
        ),
        "",
        "![retention vs cost](retention_vs_cost.png)",
        "",
        "## Every cell",
        "",
        *_table(summary, lambda s: True),
        "",
    ]
    (out / "results.md").write_text("\n".join(text))
