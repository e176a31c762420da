"""`slm serve ARTIFACT`: the OpenAI-compatible endpoint. fastapi/uvicorn/torch load inside the command."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from slm_toolkit.runtime.backends import BACKEND_CHOICES


def serve(
    artifact: Annotated[Path, typer.Argument(help="artifact folder (HF, ONNX or TensorRT)", show_default=False)],
    backend: Annotated[Optional[str], typer.Option(help=f"{'|'.join(BACKEND_CHOICES)} (default: auto)")] = None,
    host: Annotated[Optional[str], typer.Option(help="bind address (default: 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="port (default: 8000)")] = None,
    api_key_env: Annotated[
        Optional[str], typer.Option(help="environment variable holding a bearer API key (requests without it get 401)")
    ] = None,
    max_batch_size: Annotated[Optional[int], typer.Option(help="sequences decoded together (default: 16)")] = None,
    max_queue: Annotated[Optional[int], typer.Option(help="waiting requests before 429 (default: 128)")] = None,
    max_model_len: Annotated[
        Optional[int], typer.Option(help="prompt + max_tokens limit (default: the model's)")
    ] = None,
    request_timeout: Annotated[
        Optional[float], typer.Option(help="seconds before a request is cancelled (default: 120)")
    ] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="continuous|naive (default: continuous)")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto|cpu|cuda[:N] (default: auto)")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for the model (default: the library's)")] = None,
    model_name: Annotated[Optional[str], typer.Option(help="served model name (default: folder name)")] = None,
    config: Annotated[Optional[Path], typer.Option(help="server config YAML (flags override it)")] = None,
) -> None:
    """Serve an artifact behind an OpenAI-compatible API with continuous batching."""
    from pydantic import ValidationError

    from slm_toolkit.serving.config import load_serve_config

    err = lambda msg: typer.echo(f"error: {msg}", err=True)  # noqa: E731
    try:
        cfg = load_serve_config(
            config,
            backend=backend,
            host=host,
            port=port,
            api_key_env=api_key_env,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            max_model_len=max_model_len,
            request_timeout=request_timeout,
            scheduler=scheduler,
            device=device,
            threads=threads,
            model_name=model_name,
        )
    except (ValidationError, ValueError, OSError) as exc:
        err(f"invalid server settings: {exc}")
        raise typer.Exit(2) from None
    if not artifact.is_dir():
        err(f"artifact folder not found: {artifact}")
        raise typer.Exit(2)
    raise typer.Exit(run_server(artifact, cfg))


def run_server(artifact: Path, cfg) -> int:
    """Start uvicorn; the model loads in the engine thread while /ready answers 503. Exit code."""
    import uvicorn
    from transformers import AutoTokenizer

    from slm_toolkit.runtime.loader import load_generator
    from slm_toolkit.serving.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = cfg.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        tokenizer = AutoTokenizer.from_pretrained(artifact)
    except Exception as exc:  # noqa: BLE001 - any failure here means: not a servable folder
        typer.echo(f"error: could not load a tokenizer from {artifact}: {exc}", err=True)
        return 1
    server: uvicorn.Server | None = None

    def load():
        return load_generator(artifact, backend=cfg.backend, device=device, threads=cfg.threads)

    def stop_on_failure():
        if server is not None:
            server.should_exit = True

    try:
        app = create_app(
            load, tokenizer, cfg, model_name=cfg.model_name or artifact.resolve().name, on_load_failure=stop_on_failure
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    # uvicorn handles SIGTERM/SIGINT: stop accepting, let in-flight requests finish (up to the
    # graceful timeout), then the app's lifespan drains the engine.
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=cfg.host,
            port=cfg.port,
            log_level="info",
            timeout_graceful_shutdown=int(cfg.graceful_shutdown_s) or None,
        )
    )
    server.run()
    engine = app.state.service.engine
    if engine.load_error is not None:
        typer.echo(f"error: could not load {artifact}: {engine.load_error}", err=True)
        return 1
    return 0


if __name__ == "__main__":  # python -m slm_toolkit.serving.cli ARTIFACT
    typer.run(serve)
    sys.exit(0)
