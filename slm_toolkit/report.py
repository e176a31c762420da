"""The run report: `report.md` (one row per stage, then each stage's own section) and
`report.png` (quality against size and against latency), built from `manifest.json` alone, so
`slm report RUN_DIR` can rebuild it at any time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from slm_toolkit.core.artifacts import write_text_atomic

DASH = "—"
PLOT = "report.png"
COLUMNS = ("stage", "status", "accuracy", "retention", "params", "size MB", "latency ms", "wall time")


def _num(metrics: dict[str, Any], key: str) -> float | None:
    v = metrics.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _fmt_params(v: float | None) -> str:
    if v is None:
        return DASH
    if v >= 1e9:
        return f"{v / 1e9:.2f}B"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}K"
    return f"{v:.0f}"


def _fmt(v: float | None, spec: str) -> str:
    return DASH if v is None else format(v, spec)


def _fmt_wall(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds >= 60:
        return f"{int(seconds // 60)}m {seconds % 60:04.1f}s"
    return f"{seconds:.1f}s"


def stage_row(record: dict[str, Any]) -> list[str]:
    m = record.get("metrics") or {}
    size = _num(m, "bytes")
    status = record.get("status", DASH)
    if record.get("reused") and status != "skipped":
        status += " (reused)"
    return [
        record.get("folder", record.get("name", "?")),
        status,
        _fmt(_num(m, "accuracy"), ".3f"),
        _fmt(_num(m, "retention"), ".3f"),
        _fmt_params(_num(m, "params")),
        _fmt(None if size is None else size / 1e6, ".2f"),
        _fmt(_num(m, "latency_ms_median"), ".1f"),
        _fmt_wall(_num(record.get("timings") or {}, "wall_s")),
    ]


def _table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _points(stages: list[dict[str, Any]], x_key: str, scale: float) -> list[tuple[str, float, float]]:
    pts = []
    for r in stages:
        m = r.get("metrics") or {}
        acc, x = _num(m, "accuracy"), _num(m, x_key)
        if acc is not None and x is not None:
            pts.append((r.get("folder", r.get("name", "?")), x / scale, acc))
    return pts


def build_plot(stages: list[dict[str, Any]], path: Path) -> bool:
    """Accuracy against size (MB) and against latency (ms), one point per stage that has them."""
    by_size = _points(stages, "bytes", 1e6)
    by_latency = _points(stages, "latency_ms_median", 1.0)
    if not by_size and not by_latency:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, pts, xlabel in ((axes[0], by_size, "size (MB)"), (axes[1], by_latency, "latency (ms, batch 1)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (exact match)")
        ax.grid(True, alpha=0.3)
        for label, x, y in pts:
            ax.scatter([x], [y])
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if not pts:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def _sections(run_dir: Path, stages: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in stages:
        folder = run_dir / r.get("folder", "")
        section = folder / "report_section.md"
        plots = (r.get("extra") or {}).get("plots") or []
        if not section.is_file() and not plots:
            continue
        out.append(f"## {r.get('folder')}\n")
        if section.is_file():
            out.append(section.read_text(encoding="utf-8").strip() + "\n")
        out += [f"![{p}]({r.get('folder')}/{p})\n" for p in plots]
    return out


def build_report(run_dir: Path | str) -> Path:
    """Write `report.md` (and `report.png` when any stage has quality with size or latency)."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: it has no manifest.json")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    stages = manifest.get("stages", [])
    parts = [
        f"# Run report: {manifest.get('name', run_dir.name)}\n",
        f"- model: `{manifest.get('model', DASH)}`",
        f"- device: {manifest.get('device', DASH)}, seed: {manifest.get('seed', DASH)}",
        f"- status: **{manifest.get('status', DASH)}** (updated {manifest.get('updated_at', DASH)})",
        "- recipe: [recipe.resolved.yaml](recipe.resolved.yaml), manifest: [manifest.json](manifest.json)\n",
        _table([stage_row(r) for r in stages]) + "\n",
    ]
    failed = [r for r in stages if r.get("status") == "failed"]
    parts += [f"**{r['folder']} failed:** {r.get('error', '')} (traceback: error.log)\n" for r in failed]
    if build_plot(stages, run_dir / PLOT):
        parts.append(f"![accuracy against size and latency]({PLOT})\n")
    elif (run_dir / PLOT).exists():
        (run_dir / PLOT).unlink()
    parts += _sections(run_dir, stages)
    return write_text_atomic(run_dir / "report.md", "\n".join(parts))
