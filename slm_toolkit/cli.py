"""`slm`: run, validate, eval, report (and serve, bench from their own modules).

Exit codes: 0 success, 1 a stage or the run failed, 2 a recipe or usage error (nothing written).
Heavy libraries (torch, transformers) are imported inside commands so `slm --help` is instant.
Set SLM_DEBUG=1 to see full tracebacks instead of one-line errors.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from slm_toolkit import pipeline
from slm_toolkit.core.artifacts import read_meta
from slm_toolkit.core.errors import ModelNotAvailable, RecipeError, StageFailed, validation_lines
from slm_toolkit.core.paths import cache_dir
from slm_toolkit.core.runlog import quiet_run
from slm_toolkit.data.loaders import load_data
from slm_toolkit.evaluate.config import EvaluateConfig
from slm_toolkit.evaluate.stage import run as evaluate_run
from slm_toolkit.models.resolve import resolve_artifact
from slm_toolkit.recipe import load_recipe
from slm_toolkit.report import build_report
from slm_toolkit.runtime.backends import BACKEND_CHOICES
from slm_toolkit.stage import StageInput

app = typer.Typer(
    name="slm",
    help="Compress a language model (distill, prune, quantize, export), evaluate and serve it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file", show_default=False)]
OverridesArg = Annotated[
    Optional[list[str]],
    typer.Argument(
        help="overrides key.path=value, e.g. stages.0.distill.truncate.fraction=0.25 seed=3", show_default=False
    ),
]


def _fail(message: str, code: int, hint: str | None = None) -> typer.Exit:
    """Print a one-line error (no traceback) and return the Exit to raise."""
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    if hint:
        err.print(f"[dim]{escape(hint)}[/]", soft_wrap=True)
    return typer.Exit(code)


def _recipe_error(exc: RecipeError) -> typer.Exit:
    for line in exc.lines:
        err.print(f"[bold red]recipe error:[/] {escape(line)}", soft_wrap=True)
    return typer.Exit(2)


def _load(recipe: Path, overrides: list[str] | None):
    try:
        return load_recipe(recipe, overrides or [])
    except RecipeError as exc:
        raise _recipe_error(exc) from None


@app.command()
def run(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    restart: Annotated[bool, typer.Option("--restart", help="rerun every stage (deletes earlier results)")] = False,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="run folder (default: runs/<name>)")] = None,
) -> None:
    """Run a recipe's stages in order, resuming where an earlier run stopped."""
    r = _load(recipe, overrides)
    try:
        pipeline.run(r, run_dir=run_dir, restart=restart, console=out)
    except RecipeError as exc:
        raise _recipe_error(exc) from None
    except StageFailed as exc:
        raise _fail(str(exc), 1, f"traceback: {exc.log}" if exc.log else None) from None
    except KeyboardInterrupt:
        raise _fail("interrupted", 130, "run the same command again to resume") from None
    except Exception as exc:  # model/data resolution and other run-level failures
        if os.environ.get("SLM_DEBUG"):
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise _fail(msg, 1, "set SLM_DEBUG=1 for the traceback") from None


@app.command()
def validate(recipe: RecipeArg, overrides: OverridesArg = None) -> None:
    """Check a recipe (and overrides) without running anything; print its stages."""
    r = _load(recipe, overrides)
    table = Table(title=f"recipe {r.name}: model {r.model}, data {r.data.source}, seed {r.seed}")
    for col in ("#", "folder", "input", "output", "config hash"):
        table.add_column(col)
    for i, s in enumerate(r.stages, 1):
        table.add_row(str(i), f"{i:02d}-{s.name}", s.input_kind, s.output_kind, pipeline.config_hash(s))
    out.print(table)
    for i, s in enumerate(r.stages, 1):  # every key of each stage as it will run, defaults included
        settings = ", ".join(f"{k}={v}" for k, v in _flat(s.config.model_dump(mode="json")).items())
        out.print(f"{i:02d}-{s.name}: {escape(settings)}", soft_wrap=True)
    out.print(f"[green]ok[/] {escape(str(recipe))}: {len(r.stages)} stage(s) valid", soft_wrap=True)


def _flat(d: dict, prefix: str = "") -> dict:
    """{"truncate": {"fraction": 0.5}} -> {"truncate.fraction": 0.5}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


@app.command(name="eval")
def eval_cmd(
    artifact: Annotated[
        Path,
        typer.Argument(
            help="artifact folder (HF or ONNX), or a model spec (a .gguf file, smollm2)", show_default=False
        ),
    ],
    data: Annotated[
        str, typer.Option("--data", help="builtin:arith-cot, a .jsonl file or a folder")
    ] = "builtin:arith-cot",
    n_eval: Annotated[int, typer.Option("--eval", min=1, help="eval examples")] = 200,
    backend: Annotated[str, typer.Option("--backend", help=" | ".join(BACKEND_CHOICES))] = "auto",
    reference: Annotated[
        Optional[Path], typer.Option("--reference", help="reference artifact for retention (default: itself)")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
) -> None:
    """Evaluate one artifact (accuracy, perplexity per segment, size, latency) and print the metrics."""
    try:
        cfg = EvaluateConfig(backend=backend)
    except ValidationError as exc:
        raise _fail(validation_lines(exc, {"backend": backend})[0].replace("backend", "--backend", 1), 2) from None
    try:
        artifact = resolve_artifact(artifact)
        reference = resolve_artifact(reference) if reference is not None else artifact
    except ModelNotAvailable as exc:
        raise _fail(str(exc), 2) from None
    try:
        with quiet_run(cache_dir() / "logs" / "eval.log"):  # third-party warnings: to the log, not the table
            metrics = _evaluate(cfg, artifact, reference, data, n_eval, seed, device)
    except RecipeError as exc:
        raise _recipe_error(exc) from None
    except Exception as exc:
        if os.environ.get("SLM_DEBUG"):
            raise
        raise _fail(" ".join(str(exc).split()) or type(exc).__name__, 1, "set SLM_DEBUG=1 for the traceback") from None
    table = Table(title=f"evaluate {artifact}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    out.print(table)


def _evaluate(cfg, artifact: Path, reference: Path, data: str, n_eval: int, seed: int, device: str) -> dict:
    task = read_meta(artifact).get("task") or {}  # the demo task the artifact was made for, if known
    bundle = load_data(data, "auto", 1, n_eval, seed, task if isinstance(task, dict) else {})
    pipeline.seed_everything(seed)
    with tempfile.TemporaryDirectory(prefix="slm-eval-") as tmp:
        inp = StageInput(
            artifact=artifact,
            model=reference,
            data=bundle,
            workdir=Path(tmp),
            run_dir=Path(tmp),
            device=pipeline.resolve_device(device),
            seed=seed,
        )
        return dict(evaluate_run(cfg, inp).metrics)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="run folder", show_default=False)]) -> None:
    """Rebuild a run's report.md and report.png from its manifest."""
    try:
        path = build_report(run_dir)
    except FileNotFoundError as exc:
        raise _fail(str(exc), 2) from None
    out.print(f"report: {escape(str(path))}", soft_wrap=True)


# Commands from other packages, one line each (their modules import without torch/fastapi):
from slm_toolkit.serving.cli import serve  # noqa: E402

app.command()(serve)
from slm_toolkit.bench.cli import bench_app  # noqa: E402

app.add_typer(bench_app, name="bench")


def main() -> None:  # pragma: no cover - `python -m slm_toolkit.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
