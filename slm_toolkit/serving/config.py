"""Server settings: validated once at the edge (CLI flags over an optional YAML file)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from slm_toolkit.core.types import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from slm_toolkit.runtime.backends import BackendChoice

MAX_DEFAULT_THREADS = 8


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: BackendChoice = "auto"  # runtime/backends.py
    device: str = "auto"  # auto: cuda when available, else cpu
    threads: PositiveInt | None = None  # None: default_threads()
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    model_name: str | None = None  # served name; default: the artifact folder's name as given
    api_key_env: str | None = None  # name of the environment variable holding the bearer key
    max_batch_size: PositiveInt = Field(default=16, le=1024)
    max_queue: NonNegativeInt = 128
    max_model_len: int | None = Field(default=None, ge=2)  # default: the model's own limit
    token_budget: PositiveInt = 4096  # prompt tokens prefilled per engine step
    request_timeout: PositiveFloat = 120.0
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    scheduler: Literal["continuous", "naive"] = "continuous"
    graceful_shutdown_s: NonNegativeFloat = 30.0
    header_timeout_s: PositiveFloat = 10.0  # a connection that has not sent a request's headers by then is closed
    body_timeout_s: PositiveFloat = 30.0  # a request body not received by then gets 408
    max_connections: PositiveInt = 512  # open connections + in-flight requests; past it: 503
    access_log: bool = False  # one log line per request (costs ~0.1 ms of the event loop each)


def default_threads(cpus: int | None = None) -> int:
    """CPU threads for the model when --threads is not given: half the CPUs this process may
    use, at least 1, at most 8. The other half is left to the event loop (HTTP, tokenizing,
    detokenizing), the OS and whatever else runs on the machine: an OpenMP thread that has to
    wait for a busy core stalls every operator of every step (on a loaded 2-core machine the
    library default of one thread per core served 4.4 requests/s against 33.7 with one thread),
    while leaving a core idle costs at most a factor of two. Decoding small models gains little
    past 8 threads."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_THREADS, cpus // 2))


def load_serve_config(path: Path | None, **overrides) -> ServeConfig:
    """YAML file (optional) with flag values on top; None values mean 'not given'."""
    data: dict = {}
    if path is not None:
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a server config must be a mapping of settings")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return ServeConfig(**data)
