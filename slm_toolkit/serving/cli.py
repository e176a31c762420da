"""`slm serve ARTIFACT`: the OpenAI-compatible endpoint. fastapi/uvicorn/torch load inside the command."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from slm_toolkit.core.errors import ModelNotAvailable
from slm_toolkit.models.resolve import resolve_artifact
from slm_toolkit.runtime.backends import BACKEND_CHOICES
from slm_toolkit.runtime.loader import load_generator
from slm_toolkit.serving.artifact import batch_invariant, model_ids, reasoning_marker
from slm_toolkit.serving.config import default_threads, load_serve_config


def serve(
    artifact: Annotated[
        Path,
        typer.Argument(
            help="artifact folder (HF, ONNX or TensorRT), or a model spec (a .gguf file, smollm2)", show_default=False
        ),
    ],
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
    threads: Annotated[
        Optional[int], typer.Option(help="CPU threads for the model (default: half the CPUs, 1 to 8)")
    ] = None,
    model_name: Annotated[
        Optional[str], typer.Option(help="served model name (default: the artifact folder's name as given)")
    ] = None,
    config: Annotated[Optional[Path], typer.Option(help="server config YAML (flags override it)")] = None,
) -> None:
    """Serve an artifact behind an OpenAI-compatible API with continuous batching."""
    from pydantic import ValidationError

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
    given = artifact
    try:
        artifact = resolve_artifact(artifact)  # a folder as it is; a .gguf file or model name converted once
    except ModelNotAvailable as exc:
        err(str(exc))
        raise typer.Exit(2) from None
    raise typer.Exit(run_server(artifact, cfg, given))


def run_server(artifact: Path, cfg, given: Path | None = None) -> int:
    """Start uvicorn; the model loads in the engine thread while /ready answers 503. Exit code:
    0 after a clean drain (SIGTERM / SIGINT included), 1 when the model cannot load, 2 for bad settings."""
    import uvicorn
    from transformers import AutoTokenizer

    from slm_toolkit.serving.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = cfg.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = cfg.threads or default_threads()
    try:
        tokenizer = AutoTokenizer.from_pretrained(artifact)
    except Exception as exc:  # noqa: BLE001 - any failure here means: not a servable folder
        typer.echo(f"error: could not load a tokenizer from {artifact}: {exc}", err=True)
        return 1
    server: uvicorn.Server | None = None

    def load():
        return load_generator(artifact, backend=cfg.backend, device=device, threads=threads)

    def stop_on_failure():
        if server is not None:
            server.should_exit = True

    ids = model_ids(given or artifact, cfg.model_name, also=artifact)
    try:
        invariant = batch_invariant(artifact)
    except Exception:  # noqa: BLE001 - an unreadable graph fails at load, with its own message
        invariant = True
    try:
        app = create_app(
            load,
            tokenizer,
            cfg,
            model_name=ids.served,
            accepted_names=ids.accepted,
            reasoning_marker=reasoning_marker(artifact),
            batch_invariant=invariant,
            on_load_failure=stop_on_failure,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    logging.getLogger("slm_toolkit.serving").info(
        "serving %s as '%s' with %d thread(s)%s", artifact, ids.served, threads, "" if invariant else ", unbatched"
    )
    # uvicorn handles SIGTERM/SIGINT: stop accepting, let in-flight requests finish (up to the
    # graceful timeout), then the app's lifespan drains the engine.
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=cfg.host,
            port=cfg.port,
            log_level="info",
            http=header_timeout(cfg.header_timeout_s),
            timeout_keep_alive=5,
            limit_concurrency=cfg.max_connections,
            access_log=cfg.access_log,
            timeout_graceful_shutdown=int(cfg.graceful_shutdown_s) or None,
        )
    )
    with _drain_exits_zero():
        server.run()
    engine = app.state.service.engine
    if engine.load_error is not None:
        typer.echo(f"error: could not load {artifact}: {engine.load_error}", err=True)
        return 1
    return 0


class _drain_exits_zero:
    """uvicorn re-raises the SIGTERM/SIGINT it drained on, after restoring the handlers it found:
    with a no-op handler installed here that re-raise ends nothing, and a clean drain exits 0."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self):
        self.saved = {s: signal.signal(s, lambda *_: None) for s in self.SIGNALS}

    def __exit__(self, *exc):
        for s, handler in self.saved.items():
            signal.signal(s, handler)


def header_timeout(seconds: float):
    """uvicorn's h11 protocol, closing a connection that has not sent a complete request head
    within `seconds` of connecting or of its previous response (slow-header clients). uvicorn
    has no such setting; it accepts any callable that builds the protocol."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    def make(*args, **kwargs):
        proto = H11Protocol(*args, **kwargs)
        made = proto.connection_made

        def connection_made(transport):
            made(transport)
            loop = asyncio.get_running_loop()

            def check(last=None):
                if transport.is_closing():
                    return
                cycle = proto.cycle
                if cycle is None or (cycle is last and cycle.response_complete):
                    transport.close()  # no new request head in a whole window
                    return
                loop.call_later(seconds, check, cycle)

            loop.call_later(seconds, check)

        proto.connection_made = connection_made
        return proto

    return make


if __name__ == "__main__":  # python -m slm_toolkit.serving.cli ARTIFACT
    typer.run(serve)
    sys.exit(0)
