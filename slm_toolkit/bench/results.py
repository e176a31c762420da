"""results.json (one entry per load level with vLLM's keys, plus per-request detail) and the
markdown table; `compare` puts several results side by side."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from slm_toolkit.bench.metrics import FORMULAS
from slm_toolkit.core.artifacts import write_json_atomic, write_text_atomic

TERMINAL = (
    "level",
    "label",
    "done",
    "failed",
    "out tok/s",
    "TTFT med ms",
    "TTFT p99 ms",
    "TPOT med ms",
    "ITL med ms",
    "E2E med ms",
)  # the columns that fit a terminal
COLUMNS = [  # (header, key, format)
    ("level", "name", "s"),
    ("done", "completed", ".0f"),
    ("failed", "failed", ".0f"),
    ("429", "rate_limited", ".0f"),
    ("req/s", "request_throughput", ".2f"),
    ("out tok/s", "output_throughput", ".1f"),
    ("total tok/s", "total_token_throughput", ".1f"),
    ("goodput req/s", "request_goodput", ".2f"),
    ("TTFT med ms", "median_ttft_ms", ".1f"),
    ("TTFT p99 ms", "p99_ttft_ms", ".1f"),
    ("TPOT med ms", "median_tpot_ms", ".2f"),
    ("TPOT p99 ms", "p99_tpot_ms", ".2f"),
    ("ITL med ms", "median_itl_ms", ".2f"),
    ("ITL p99 ms", "p99_itl_ms", ".2f"),
    ("E2E med ms", "median_e2el_ms", ".0f"),
    ("E2E p99 ms", "p99_e2el_ms", ".0f"),
]


def _clean(obj: Any) -> Any:
    """NaN/inf -> None, so results.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def build(run_info: dict[str, Any], levels: list[dict[str, Any]]) -> dict[str, Any]:
    """The results document: run settings, the published formulas, one entry per level."""
    return _clean({**run_info, "formulas": FORMULAS, "levels": levels})


def _cell(level: dict[str, Any], key: str, spec: str) -> str:
    v = level.get(key)
    if v is None:
        return "—"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def table_md(levels: list[dict[str, Any]], label_col: bool = False) -> str:
    cols = ([("label", "label", "s")] if label_col else []) + COLUMNS
    lines = ["| " + " | ".join(h for h, _, _ in cols) + " |", "|" + "---|" * len(cols)]
    for lv in levels:
        lines.append("| " + " | ".join(_cell(lv, k, f) for _, k, f in cols) + " |")
    return "\n".join(lines) + "\n"


def markdown(doc: dict[str, Any]) -> str:
    head = f"## Serving benchmark: {doc.get('label', '')}\n\n"
    settings = ", ".join(
        f"{k} {doc[k]}"
        for k in ("url", "artifact", "backend", "scheduler", "dataset", "input_len", "output_len", "warmup", "slo")
        if doc.get(k) is not None
    )
    warnings = [f"- **warning ({lv['name']})**: {w}" for lv in doc["levels"] for w in lv.get("warnings", [])]
    formulas = "\n".join(f"- `{k}`: {v}" for k, v in doc["formulas"].items())
    return (
        head
        + settings
        + "\n\n"
        + table_md(doc["levels"])
        + "\n"
        + "\n".join(warnings)
        + ("\n\n" if warnings else "")
        + "Formulas:\n\n"
        + formulas
        + "\n"
    )


def save(doc: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js = write_json_atomic(out_dir / "results.json", doc)
    md = write_text_atomic(out_dir / "results.md", markdown(doc))
    return js, md


def load(path: Path) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("levels"), list):
        raise ValueError(f"{path}: not a `slm bench` results.json (no `levels` list)")
    return doc


def compare_md(docs: list[dict[str, Any]], names: list[str]) -> str:
    rows = [{**lv, "label": name} for doc, name in zip(docs, names) for lv in doc["levels"]]
    return table_md(rows, label_col=True)


def flat_metrics(levels: list[dict[str, Any]]) -> dict[str, float]:
    """Numbers for the run manifest: <key>_<level> for the headline keys of every level."""
    keys = (
        "output_throughput",
        "request_throughput",
        "request_goodput",
        "median_ttft_ms",
        "p99_ttft_ms",
        "median_tpot_ms",
        "p99_tpot_ms",
        "median_itl_ms",
        "median_e2el_ms",
        "completed",
        "failed",
    )
    out: dict[str, float] = {}
    for lv in levels:
        for k in keys:
            v = lv.get(k)
            if isinstance(v, (int, float)) and math.isfinite(v):
                out[f"{k}_{lv['name']}"] = float(v)
    return out
