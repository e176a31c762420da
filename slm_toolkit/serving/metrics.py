"""Prometheus metrics of one server instance (prometheus-client), in a registry of its own.

A registry per app instance keeps two servers in one process (tests) from colliding.
Names follow the issue; buckets follow vLLM's.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ttft = Histogram(
            "time_to_first_token_seconds", "Time from arrival to the first token.", buckets=_LATENCY, registry=r
        )
        self.itl = Histogram(
            "inter_token_latency_seconds", "Time between two tokens of a request.", buckets=_LATENCY, registry=r
        )
        self.e2e = Histogram(
            "e2e_request_latency_seconds", "Time from arrival to the last token.", buckets=_LATENCY, registry=r
        )
        self.queue_time = Histogram(
            "request_queue_time_seconds", "Time a request waited before prefill.", buckets=_LATENCY, registry=r
        )
        self.running = Gauge("num_requests_running", "Sequences in the running batch.", registry=r)
        self.waiting = Gauge("num_requests_waiting", "Requests waiting for a batch slot.", registry=r)
        self.prompt_tokens = Counter("prompt_tokens", "Prompt tokens prefilled.", registry=r)
        self.generation_tokens = Counter("generation_tokens", "Tokens generated.", registry=r)
        self.rejected = Counter(
            "requests_rejected", "Requests refused before reaching the engine.", ["reason"], registry=r
        )
        self.finished = Counter(
            "requests_finished", "Requests that left the engine, by reason.", ["reason"], registry=r
        )
        self.batch_size = Histogram(
            "batch_size", "Sequences decoded together in one engine step.", buckets=_BATCH, registry=r
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
