"""Plots (matplotlib, Agg): latency against throughput across the sweep, and the TTFT CDF."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_throughput(
    series: dict[str, list[dict[str, Any]]], path: Path, ceilings: dict[str, float] | None = None
) -> Path:
    """One line per series (label -> levels): median TPOT and p99 TTFT against output tok/s;
    `ceilings` (label -> tok/s) are drawn as vertical lines (e.g. an in-process static batch)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for label, levels in series.items():
        pts = [lv for lv in levels if lv.get("output_throughput") and lv.get("median_tpot_ms") is not None]
        x = [lv["output_throughput"] for lv in pts]
        for ax, key in zip(axes, ("median_tpot_ms", "p99_ttft_ms")):
            y = [lv.get(key) for lv in pts]
            ax.plot(x, y, marker="o", label=label)
            for lv, xi, yi in zip(pts, x, y):
                if yi is not None:
                    ax.annotate(lv["name"], (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for i, (label, tput) in enumerate((ceilings or {}).items()):
        for ax in axes:
            ax.axvline(tput, color="gray", linestyle=("--", ":", "-.")[i % 3], label=label)
    for ax, title in zip(axes, ("median TPOT (ms)", "p99 TTFT (ms)")):
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(title)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if axes[0].lines:
        axes[0].legend(fontsize=8)
    fig.suptitle("latency against throughput")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ttft_cdf(levels: list[dict[str, Any]], path: Path, label: str = "") -> Path:
    """Empirical CDF of TTFT per level, from the per-request detail."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for lv in levels:
        vals = sorted(r["ttft_s"] * 1000 for r in lv.get("requests", []) if r.get("ok") and r.get("ttft_s"))
        if vals:
            ax.step(vals, [(i + 1) / len(vals) for i in range(len(vals))], where="post", label=lv["name"])
    ax.set_xlabel("TTFT (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"TTFT CDF {label}".strip())
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
