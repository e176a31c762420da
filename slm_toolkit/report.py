"""The run report: `report.md` (one row per stage, then each stage's own section) and
`report.png` (quality against size and against latency), built from `manifest.json` alone, so
`slm report RUN_DIR` can rebuild it at any time.

Each evaluated artifact is named by what it is (`artifact_label`: teacher, base student,
distilled, pruned, healed, ONNX fp32, int8 ONNX, ...), read from the chain of stages that made
it. The plot draws the chain as a path in stage order (side evaluations such as the base student
are lone points), places labels where they overlap neither each other nor the points, and puts
size on a log axis when sizes span more than 10x. A perplexity worse than a uniform guess (at or
above the vocabulary size: the model was never trained on that segment) is shown as "—".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from slm_toolkit.core.artifacts import write_text_atomic
from slm_toolkit.measures.scoring import shown_perplexity

DASH = "—"
PLOT = "report.png"
COLUMNS = (
    "stage",
    "status",
    "accuracy",
    "retention",
    "params",
    "size MB",
    "latency ms",
    "ppl CoT",
    "agreement",
    "wall time",
)
# Stages whose output is a new artifact, and how it is named.
_QUANT_NAMES = {"int8_dynamic": "int8", "int8_weight_only": "int8 weights", "int4_weight_only": "int4 weights"}
LOG_SPAN = 10.0  # a size axis spanning more than this factor is drawn in log scale


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


def stage_row(record: dict[str, Any], label: str | None = None) -> list[str]:
    m = record.get("metrics") or {}
    size = _num(m, "bytes")
    status = record.get("status", DASH)
    if record.get("reused") and status != "skipped":
        status += " (reused)"
    stage = record.get("folder", record.get("name", "?"))
    return [
        f"{stage} ({label})" if label else stage,
        status,
        _fmt(_num(m, "accuracy"), ".3f"),
        _fmt(_num(m, "retention"), ".3f"),
        _fmt_params(_num(m, "params")),
        _fmt(None if size is None else size / 1e6, ".2f"),
        _fmt(_num(m, "latency_ms_median"), ".1f"),
        _fmt(shown_perplexity(_num(m, "ppl_cot"), _num(m, "vocab_size")), ".3f"),
        _fmt(_num(m, "agreement"), ".3f"),
        _fmt_wall(_num(record.get("timings") or {}, "wall_s")),
    ]


# -- what each evaluated artifact is ---------------------------------------------------------
def artifact_label(stages: list[dict[str, Any]], index: int) -> str:
    """What the artifact measured by stages[index] is, from the stages that made it."""
    record = stages[index]
    cfg = record.get("config") or {}
    if record.get("name") == "evaluate" and cfg.get("model"):
        return _model_label(str(cfg["model"]))
    chain = [r for r in stages[: index + 1] if r.get("name") in ("distill", "prune", "quantize", "export")]
    if record.get("name") not in ("distill", "prune", "quantize", "export") and not chain:
        return "teacher"
    if not chain:
        return "teacher"
    return _producer_label(chain[-1], pruned_before=any(r.get("name") == "prune" for r in chain[:-1]))


def _model_label(spec: str) -> str:
    if spec.endswith("arith-student"):
        return "base student"
    if spec.endswith("arith-teacher"):
        return "teacher"
    return Path(spec).name or spec


def _producer_label(record: dict[str, Any], pruned_before: bool) -> str:
    cfg = record.get("config") or {}
    name = record.get("name")
    if name == "prune":
        return "pruned"
    if name == "distill":
        base = "healed" if pruned_before else "distilled"
        truncate = cfg.get("truncate") or {}
        if truncate.get("fraction"):
            return f"{base}, first {truncate['fraction']:.0%}"
        if truncate.get("tokens"):
            return f"{base}, first {truncate['tokens']} tokens"
        return base
    if name == "export":
        fmt = cfg.get("format", "onnx")
        return "ONNX fp32" if fmt == "onnx" else f"{fmt} {cfg.get('precision', '')}".strip()
    scheme = str(cfg.get("scheme", "quantized"))
    if scheme.startswith("ort_"):
        bits = scheme[4:].split("_")
        return f"{bits[0]} ONNX" + (f" ({' '.join(bits[1:])})" if bits[1:] and bits[1:] != ["dynamic"] else "")
    return _QUANT_NAMES.get(scheme, scheme.replace("_", " "))


def _table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _point_records(stages: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """The records plotted: the evaluate stages when there are any (one point per evaluated
    artifact), else every stage with metrics."""
    evaluated = [(i, r) for i, r in enumerate(stages) if r.get("name") == "evaluate" and r.get("metrics")]
    return evaluated or [(i, r) for i, r in enumerate(stages) if r.get("metrics")]


def _points(stages: list[dict[str, Any]], x_key: str, y_key: str, scale: float) -> list[tuple[str, float, float, bool]]:
    """(label, x, y, on the chain) for each plotted record that has both figures."""
    pts = []
    for i, r in _point_records(stages):
        m = r.get("metrics") or {}
        y = _num(m, y_key)
        if y_key == "ppl_cot":
            y = shown_perplexity(y, _num(m, "vocab_size"))
        x = _num(m, x_key)
        if y is not None and x is not None:
            side = r.get("name") == "evaluate" and bool((r.get("config") or {}).get("model"))
            pts.append((artifact_label(stages, i), x / scale, y, not side))
    return pts


def build_plot(stages: list[dict[str, Any]], path: Path) -> bool:
    """Quality (accuracy; CoT perplexity when measured) against size (MB) and latency (ms)."""
    panels = [
        (_points(stages, "bytes", "accuracy", 1e6), "size (MB)", "accuracy (exact match)"),
        (_points(stages, "latency_ms_median", "accuracy", 1.0), "latency (ms, batch 1)", "accuracy (exact match)"),
    ]
    ppl = _points(stages, "bytes", "ppl_cot", 1e6)
    if len(ppl) >= 2:
        panels.append((ppl, "size (MB)", "perplexity, CoT (lower is better)"))
    if not any(pts for pts, _, _ in panels):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), constrained_layout=True)
    for ax, (pts, xlabel, ylabel) in zip(axes, panels):
        _draw_panel(ax, pts, xlabel, ylabel)
    fig.canvas.draw()  # lay out once, so label boxes can be measured
    for ax, (pts, _, _) in zip(axes, panels):
        _place_labels(ax, pts)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def _draw_panel(ax: Any, pts: list[tuple[str, float, float, bool]], xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if not pts:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    chain = [(x, y) for _, x, y, on in pts if on]
    if len(chain) >= 2:  # the chain in stage order: where each stage moved the model
        for (x0, y0), (x1, y1) in zip(chain, chain[1:]):
            ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", color="0.55", lw=1.0))
    ax.scatter([x for _, x, _, on in pts if on], [y for _, _, y, on in pts if on], zorder=3, color="C0")
    ax.scatter([x for _, x, _, on in pts if not on], [y for _, _, y, on in pts if not on], zorder=3, color="C1")
    xs = [x for _, x, _, _ in pts]
    if min(xs) > 0 and max(xs) / min(xs) > LOG_SPAN:
        ax.set_xscale("log")
    ax.margins(0.18)


def _place_labels(ax: Any, pts: list[tuple[str, float, float, bool]]) -> None:
    """Each label at the first of a ring of offsets around its point whose box overlaps no
    earlier label and no point (greedy, in display coordinates)."""
    renderer = ax.figure.canvas.get_renderer()
    points = [ax.transData.transform((x, y)) for _, x, y, _ in pts]
    taken: list[Any] = []
    offsets = [
        (dx * r, dy * r)
        for r in (6, 14, 24, 36)
        for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1.4), (0, -1.4), (1.4, 0), (-1.4, 0))
    ]
    for label, x, y, _ in pts:
        chosen = None
        for dx, dy in offsets:
            text = ax.annotate(
                label,
                (x, y),
                textcoords="offset points",
                xytext=(dx, dy),
                fontsize=8,
                ha="left" if dx > 0 else ("right" if dx < 0 else "center"),
                va="bottom" if dy > 0 else ("top" if dy < 0 else "center"),
            )
            box = text.get_window_extent(renderer).expanded(1.05, 1.1)
            clear = not any(box.overlaps(b) for b in taken) and not any(box.contains(qx, qy) for qx, qy in points)
            if clear or (dx, dy) == offsets[-1]:
                chosen = (text, box)
                break
            text.remove()
        taken.append(chosen[1])


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


def _row_label(stages: list[dict[str, Any]], index: int) -> str | None:
    return artifact_label(stages, index) if stages[index].get("name") == "evaluate" else None


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
        _table([stage_row(r, _row_label(stages, i)) for i, r in enumerate(stages)]) + "\n",
    ]
    failed = [r for r in stages if r.get("status") == "failed"]
    parts += [f"**{r['folder']} failed:** {r.get('error', '')} (traceback: error.log)\n" for r in failed]
    if build_plot(stages, run_dir / PLOT):
        parts.append(f"![quality against size and latency]({PLOT})\n")
    elif (run_dir / PLOT).exists():
        (run_dir / PLOT).unlink()
    parts += _sections(run_dir, stages)
    return write_text_atomic(run_dir / "report.md", "\n".join(parts))
