"""`slm bench`: measure a running server (--url) or an artifact served for the run (--artifact);
`slm bench compare A.json B.json ...` puts results side by side.

Light at import (typer only): httpx, transformers and matplotlib load inside the commands.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from slm_toolkit.bench import plots
from slm_toolkit.bench.config import check_dataset, check_slo
from slm_toolkit.bench.server import serve_artifact
from slm_toolkit.core.artifacts import write_text_atomic
from slm_toolkit.runtime.backends import BACKEND_CHOICES

bench_app = typer.Typer(
    help="Latency and throughput of an OpenAI-compatible server (TTFT, TPOT, ITL, E2E, goodput).",
    add_completion=False,
    pretty_exceptions_enable=False,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _fail(msg: str, code: int) -> typer.Exit:
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(code)


def parse_concurrency(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--concurrency: expected integers like 1,2,4, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"--concurrency: every level must be an integer >= 1, got {text!r}")
    return values


def parse_slo(text: str | None) -> dict[str, float] | None:
    """ttft=500,tpot=50 -> {"ttft": 500.0, "tpot": 50.0} (milliseconds)."""

    if not text:
        return None
    slo = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        try:
            slo[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--slo: expected key=milliseconds pairs like ttft=500,tpot=50, got {part!r}") from None
        if not sep:
            raise ValueError(f"--slo: expected key=milliseconds, got {part!r}")
    try:
        return check_slo(slo)
    except ValueError as exc:
        raise ValueError(f"--slo: {exc}") from None


@bench_app.callback()
def bench(
    ctx: typer.Context,
    url: Annotated[Optional[str], typer.Option(help="base URL of a running server, e.g. http://127.0.0.1:8000")] = None,
    artifact: Annotated[Optional[Path], typer.Option(help="serve this artifact with `slm serve` for the run")] = None,
    backend: Annotated[str, typer.Option(help="with --artifact: auto|torch|onnxruntime|tensorrt")] = "auto",
    scheduler: Annotated[str, typer.Option(help="with --artifact: continuous|naive")] = "continuous",
    max_batch_size: Annotated[Optional[int], typer.Option(help="with --artifact: the server's batch size")] = None,
    concurrency: Annotated[
        Optional[str], typer.Option(help="closed-loop levels, e.g. 1,2,4,8,16,32 (with --rate: in-flight caps)")
    ] = None,
    rate: Annotated[Optional[float], typer.Option(help="open loop: requests per second (Poisson)")] = None,
    burstiness: Annotated[float, typer.Option(help="Gamma shape of arrival gaps (1 = Poisson)")] = 1.0,
    num_requests: Annotated[Optional[int], typer.Option(help="measured requests per level (default 64)")] = None,
    duration: Annotated[Optional[float], typer.Option(help="seconds per level instead of --num-requests")] = None,
    dataset: Annotated[str, typer.Option(help="random | gsm8k | FILE.jsonl")] = "random",
    input_len: Annotated[int, typer.Option(help="random dataset: prompt tokens")] = 32,
    output_len: Annotated[int, typer.Option(help="output tokens per request")] = 64,
    warmup: Annotated[int, typer.Option(help="warm-up requests per level (not counted)")] = 2,
    slo: Annotated[Optional[str], typer.Option(help="goodput SLOs in ms, e.g. ttft=500,tpot=50")] = None,
    out: Annotated[Optional[Path], typer.Option(help="results folder (default bench_results/LABEL)")] = None,
    label: Annotated[Optional[str], typer.Option(help="name of this run in tables and plots")] = None,
    api: Annotated[str, typer.Option(help="completions | chat")] = "completions",
    model: Annotated[Optional[str], typer.Option(help="model name sent with each request")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="tokenizer for random prompts with --url")] = None,
    ignore_eos: Annotated[bool, typer.Option(help="force output_len with min_tokens + ignore_eos")] = True,
    api_key_env: Annotated[Optional[str], typer.Option(help="environment variable with a bearer key")] = None,
    seed: Annotated[int, typer.Option(help="prompt sampling and arrival times")] = 0,
) -> None:
    """Benchmark a server: a closed-loop concurrency sweep, or open-loop arrivals with --rate."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        opts = _check(
            url,
            artifact,
            backend,
            scheduler,
            concurrency,
            rate,
            num_requests,
            duration,
            dataset,
            input_len,
            output_len,
            warmup,
            slo,
            api,
            burstiness,
        )
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    label = label or (artifact.resolve().name if artifact else "server") + f"-{time.strftime('%Y%m%d-%H%M%S')}"
    out = out or Path("bench_results") / label
    try:
        _run(
            url,
            artifact,
            backend,
            scheduler,
            max_batch_size,
            out,
            label,
            api,
            model,
            tokenizer,
            ignore_eos,
            api_key_env,
            seed,
            burstiness,
            input_len,
            output_len,
            warmup,
            dataset,
            duration,
            **opts,
        )
    except KeyboardInterrupt:
        raise _fail("interrupted", 130) from None
    except Exception as exc:
        if os.environ.get("SLM_DEBUG"):
            raise
        raise _fail(" ".join(str(exc).split()) or type(exc).__name__, 1) from None


def _check(
    url,
    artifact,
    backend,
    scheduler,
    concurrency,
    rate,
    num_requests,
    duration,
    dataset,
    input_len,
    output_len,
    warmup,
    slo,
    api,
    burstiness,
) -> dict:
    """Usage errors (exit 2) before anything starts; returns levels, num_requests, slo."""
    from slm_toolkit.bench.load import Level

    if (url is None) == (artifact is None):
        raise ValueError("give exactly one of --url (a running server) or --artifact (serve it for the run)")
    if artifact is not None and not artifact.is_dir():
        raise ValueError(f"--artifact: folder not found: {artifact}")
    for name, value, allowed in (
        ("--backend", backend, BACKEND_CHOICES),
        ("--scheduler", scheduler, ("continuous", "naive")),
        ("--api", api, ("completions", "chat")),
    ):
        if value not in allowed:
            raise ValueError(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")
    if num_requests is not None and duration is not None:
        raise ValueError("give --num-requests or --duration, not both")
    for name, value in (("--num-requests", num_requests), ("--input-len", input_len), ("--output-len", output_len)):
        if value is not None and value < 1:
            raise ValueError(f"{name}: must be >= 1")
    if warmup < 0 or (duration is not None and duration <= 0) or (rate is not None and rate <= 0) or burstiness <= 0:
        raise ValueError("--warmup must be >= 0; --duration, --rate and --burstiness must be > 0")
    try:
        check_dataset(dataset)
    except ValueError as exc:
        raise ValueError(f"--dataset: {exc}") from None
    caps = parse_concurrency(concurrency) if concurrency else None
    if rate is None:
        levels = [Level(c) for c in (caps or [1, 2, 4, 8, 16, 32])]
    else:
        levels = [Level(c, rate, burstiness) for c in (caps or [None])]
    return {"levels": levels, "num_requests": num_requests if num_requests or duration else 64, "slo": parse_slo(slo)}


def _run(
    url,
    artifact,
    backend,
    scheduler,
    max_batch_size,
    out,
    label,
    api,
    model,
    tokenizer_path,
    ignore_eos,
    api_key_env,
    seed,
    burstiness,
    input_len,
    output_len,
    warmup,
    dataset,
    duration,
    *,
    levels,
    num_requests,
    slo,
) -> None:
    from contextlib import nullcontext

    from slm_toolkit.bench import runner
    from slm_toolkit.bench.client import Endpoint

    tok_src = tokenizer_path or artifact
    tok = count = None
    if tok_src is not None:  # random prompts; token counts for servers that send no `usage`
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tok_src)
        count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    key = os.environ.get(api_key_env) if api_key_env else None
    out.mkdir(parents=True, exist_ok=True)
    ctx = (
        serve_artifact(
            artifact, out / "server.log", backend=backend, scheduler=scheduler, max_batch_size=max_batch_size
        )
        if artifact
        else nullcontext((url, None))
    )
    typer.echo(f"slm bench {label}: {len(levels)} level(s) -> {out}")
    with ctx as (base_url, _proc):
        ep = Endpoint(base_url, api=api, model=model, extensions=ignore_eos, api_key=key, count_tokens=count)
        info = {
            "label": label,
            "artifact": str(artifact) if artifact else None,
            "backend": backend if artifact else None,
            "scheduler": scheduler if artifact else None,
            "max_batch_size": max_batch_size,
        }
        doc = runner.run(
            ep,
            levels,
            dataset=dataset,
            num_requests=num_requests,
            input_len=input_len,
            output_len=output_len,
            warmup=warmup,
            seed=seed,
            slo=slo,
            duration_s=duration,
            tokenizer=tok if dataset == "random" else None,
            out_dir=out,
            run_info=info,
            on_level=_print_level,
            progress=True,
        )
    _print_table(doc["levels"], f"slm bench {label}")
    typer.echo(f"results: {out / 'results.json'}, {out / 'results.md'}, plots in {out}")


def _print_level(lv: dict) -> None:
    typer.echo(
        f"  {lv['name']}: {lv['completed']:.0f} done, {lv['failed']:.0f} failed, "
        f"{lv['output_throughput']:.1f} out tok/s, median TTFT {lv['median_ttft_ms'] or 0:.1f} ms"
    )
    for w in lv["warnings"]:
        typer.echo(f"  warning: {w}", err=True)


def _print_table(levels: list[dict], title: str, label_col: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    from slm_toolkit.bench.results import COLUMNS, TERMINAL, _cell

    cols = [c for c in ([("label", "label", "s")] if label_col else []) + COLUMNS if c[0] in TERMINAL]
    table = Table(title=title)
    for h, _, _ in cols:
        table.add_column(h, justify="left" if h in ("label", "level") else "right")
    for lv in levels:
        table.add_row(*[_cell(lv, k, f) for _, k, f in cols])
    Console().print(table)


@bench_app.command()
def compare(
    files: Annotated[list[Path], typer.Argument(help="results.json files from `slm bench`", show_default=False)],
    out: Annotated[Optional[Path], typer.Option(help="write compare.md and compare.png here")] = None,
) -> None:
    """Side-by-side table (and a latency-throughput plot) of several results.json."""
    from slm_toolkit.bench import results

    try:
        docs = [results.load(f) for f in files]
    except (OSError, ValueError) as exc:
        raise _fail(str(exc), 2) from None
    names = [d.get("label") or f.parent.name for d, f in zip(docs, files)]
    rows = [{**lv, "label": n} for d, n in zip(docs, names) for lv in d["levels"]]
    _print_table(rows, "slm bench compare", label_col=True)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "compare.md", results.compare_md(docs, names))
        plots.latency_throughput({n: d["levels"] for d, n in zip(docs, names)}, out / "compare.png")
        typer.echo(f"wrote {out / 'compare.md'} and {out / 'compare.png'}")
