"""Test-wide settings: no network, a private cache folder, one thread per test process."""

from __future__ import annotations

import os
from pathlib import Path

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


@pytest.fixture(scope="session")
def gsm8k_full() -> Path:
    """The full GSM8K folder (train.jsonl, test.jsonl) named by $SLM_GSM8K; the test skips without it.
    Tests that need only GSM8K's format use tests/fixtures/gsm8k (invented problems)."""
    folder = os.environ.get("SLM_GSM8K")
    if not folder:
        pytest.skip("set SLM_GSM8K to a folder with GSM8K's train.jsonl and test.jsonl to run this check")
    path = Path(folder).expanduser()
    if not (path / "train.jsonl").is_file() or not (path / "test.jsonl").is_file():
        pytest.skip(f"SLM_GSM8K={folder} has no train.jsonl and test.jsonl")
    return path


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # torch is a hard dependency; this only keeps collection errors readable
        pass
