"""Where the toolkit keeps things outside a run folder (builtin models, teacher caches)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The user's cache folder: $SLM_CACHE, else $XDG_CACHE_HOME/slm_toolkit, else ~/.cache/slm_toolkit."""
    env = os.environ.get("SLM_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slm_toolkit"
