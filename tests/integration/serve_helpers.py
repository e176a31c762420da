"""Shared by the serving tests: tiny artifacts and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import torch
from prometheus_client.parser import text_string_to_metric_families

from slm_toolkit.demo.tokenizer import build_demo_tokenizer
from slm_toolkit.runtime.loader import load_generator


def tiny_llama_folder(
    folder: Path, tok=None, max_positions: int = 256, seed: int = 0, head_dim: int | None = None
) -> Path:
    """A 2-layer Llama with the given tokenizer (default: the demo one), saved to `folder`.
    head_dim 16 lets ONNX exports take the fused GroupQueryAttention path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tok or build_demo_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim or 8,
        max_position_embeddings=max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


class Wrapped:
    """A Generator that delegates, with a per-step delay and a poisoned token that makes prefill fail."""

    def __init__(self, inner, delay: float = 0.0, poison: int | None = None):
        self.inner, self.delay, self.poison = inner, delay, poison

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def prefill(self, input_ids):
        if self.poison is not None and any(self.poison in row for row in input_ids):
            raise ValueError("poisoned prompt")
        return self.inner.prefill(input_ids)

    def decode_step(self, next_ids, state):
        time.sleep(self.delay)
        return self.inner.decode_step(next_ids, state)


class Server:
    """A real uvicorn server on a free loopback port, in a thread, with the CLI's uvicorn settings."""

    def __init__(
        self,
        artifact: Path,
        headers: dict | None = None,
        delay: float = 0.0,
        backend: str = "auto",
        app_kw: dict | None = None,
        **settings,
    ):
        import uvicorn
        from transformers import AutoTokenizer

        from slm_toolkit.serving.app import create_app
        from slm_toolkit.serving.cli import header_timeout
        from slm_toolkit.serving.config import ServeConfig

        self.tok = AutoTokenizer.from_pretrained(artifact)
        self.poison = poison = self.tok.convert_tokens_to_ids("</think>")  # only sent as explicit ids
        from slm_toolkit.serving.artifact import batch_invariant

        cfg = ServeConfig(**settings)
        app_kw = {"batch_invariant": batch_invariant(artifact), **(app_kw or {})}
        self.app = create_app(
            lambda: Wrapped(load_generator(artifact, backend, threads=1), delay, poison),
            self.tok,
            cfg,
            **{"model_name": "tiny", **app_kw},
        )
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            http=header_timeout(cfg.header_timeout_s),
            limit_concurrency=cfg.max_connections,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, headers=headers or {}, timeout=30)
        deadline = time.time() + 30
        while self.client.get("/ready").status_code != 200:
            assert time.time() < deadline, "server never became ready"
            time.sleep(0.02)

    def metrics(self) -> dict:
        text = self.client.get("/metrics").text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(15)


def metric(values: dict, name: str, **labels) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def complete(srv: Server, prompt, **kw) -> dict:
    r = srv.client.post("/v1/completions", json={"prompt": prompt, "temperature": 0.0, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def sse(lines) -> list:
    events = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def chat(srv: Server, messages, **kw) -> dict:
    r = srv.client.post("/v1/chat/completions", json={"messages": messages, "temperature": 0, **kw})
    assert r.status_code == 200, r.text
    return r.json()
