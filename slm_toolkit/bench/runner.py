"""One benchmark run: the same prompts at every load level, then results.json, results.md, plots.

Plain arguments in, the results document out (the CLI and the bench stage both call `run`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slm_toolkit.bench import plots, results
from slm_toolkit.bench.client import Endpoint
from slm_toolkit.bench.datasets import load_prompts
from slm_toolkit.bench.load import Level, run_level
from slm_toolkit.bench.metrics import saturation_warning, summarize

DURATION_POOL = 20_000  # prompts prepared for a --duration run (the clock stops it first)


def measure_level(
    ep: Endpoint, level: Level, prompts, warmup, seed: int, slo, duration_s, on_done=None
) -> dict[str, Any]:
    """Run one level and summarize it: vLLM's keys, warnings and per-request detail."""
    res, _wall = asyncio.run(run_level(ep, level, prompts, warmup, seed, duration_s, on_done))
    summary = summarize(res, slo)
    warnings = []
    if w := saturation_warning(summary, open_loop=level.rate is not None):
        warnings.append(w)
    if summary["usage_missing"]:
        warnings.append(
            f"{summary['usage_missing']} responses carried no `usage`: token counts are streamed "
            "chunks, not the server's count"
        )
    if summary["failed"]:
        first = next(r.error for r in res if not r.ok)
        warnings.append(f"{summary['failed']} requests failed (first error: {first})")
    return {
        "name": level.name,
        "concurrency": level.concurrency,
        "rate": level.rate,
        "burstiness": level.burstiness if level.rate is not None else None,
        **summary,
        "warnings": warnings,
        "requests": [r.to_dict() for r in res],
    }


def run(
    ep: Endpoint,
    levels: list[Level],
    *,
    dataset: str,
    num_requests: int | None,
    input_len: int,
    output_len: int,
    warmup: int,
    seed: int,
    slo: dict[str, float] | None,
    duration_s: float | None,
    tokenizer=None,
    out_dir: Path,
    run_info: dict[str, Any],
    on_level: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure every level with the same prompts; write results.json/.md and the two plots."""
    n = num_requests or DURATION_POOL
    pool = load_prompts(dataset, n + warmup, input_len, output_len, seed, tokenizer, as_text=ep.api == "chat")
    warm, prompts = pool[:warmup], pool[warmup:]
    done = []
    with _progress(progress) as bar:
        for level in levels:
            task = bar.add_task(f"level {level.name}", total=None if duration_s else len(prompts)) if bar else None
            tick = (lambda _r, t=task: bar.advance(t)) if bar else None
            lv = measure_level(ep, level, prompts, warm, seed, slo, duration_s, tick)
            done.append(lv)
            if on_level:
                on_level(lv)
    info = {
        "tool": "slm bench",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "url": ep.base_url,
        "api": ep.api,
        "dataset": dataset,
        "num_requests": num_requests,
        "duration_s": duration_s,
        "input_len": input_len if dataset == "random" else None,
        "output_len": output_len,
        "warmup": warmup,
        "seed": seed,
        "slo": slo,
        **run_info,
    }
    doc = results.build(info, done)
    results.save(doc, out_dir)
    write_plots(doc, out_dir)
    return doc


def _progress(enabled: bool):
    """A rich progress bar per level (requests completed), or a no-op context."""
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def write_plots(doc: dict[str, Any], out_dir: Path) -> list[str]:
    """latency_throughput.png and ttft_cdf.png in out_dir; their names."""
    label = doc.get("label") or "run"
    plots.latency_throughput({label: doc["levels"]}, out_dir / "latency_throughput.png")
    plots.ttft_cdf(doc["levels"], out_dir / "ttft_cdf.png", label)
    return ["latency_throughput.png", "ttft_cdf.png"]
