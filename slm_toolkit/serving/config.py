"""Server settings: validated once at the edge (CLI flags over an optional YAML file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from slm_toolkit.runtime.backends import BackendChoice


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: BackendChoice = "auto"
    device: str = "auto"  # auto: cuda when available, else cpu
    threads: int | None = Field(default=None, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    model_name: str | None = None  # served name; default: the artifact folder's name
    api_key_env: str | None = None  # name of the environment variable holding the bearer key
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    max_queue: int = Field(default=128, ge=0)
    max_model_len: int | None = Field(default=None, ge=2)  # default: the model's own limit
    token_budget: int = Field(default=4096, ge=1)  # prompt tokens prefilled per engine step
    request_timeout: float = Field(default=120.0, gt=0)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    scheduler: Literal["continuous", "naive"] = "continuous"
    graceful_shutdown_s: float = Field(default=30.0, ge=0)


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
