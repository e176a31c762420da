"""Test-wide settings: no network, a private cache folder, one thread per test process."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets a cache folder of its own session (builtin models, teacher caches)."""
    cache = tmp_path_factory.getbasetemp() / "slm_cache"
    monkeypatch.setenv("SLM_CACHE", str(cache))
    yield


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # torch is a hard dependency; this only keeps collection errors readable
        pass
