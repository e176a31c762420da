"""Side-by-side latency: the one helper every stage uses to compare models' batch-1 decode speed.

Runs are interleaved (A, B, A, B, ... after one warm-up of each), so load from elsewhere on the
machine hits every model alike; each model gets its median, its spread (p75 - p25) and tok/s.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from slm_toolkit.measures.metrics import decode_latency


def interleaved_latency(
    generators: Mapping[str, Any], prompt: list[int], new_tokens: int = 32, rounds: int = 5
) -> dict[str, dict[str, float]]:
    """{name: {latency_ms_median, latency_ms_spread, tok_s}} for each generator, measured interleaved."""
    if rounds < 1:
        raise ValueError("interleaved_latency needs rounds >= 1")
    for gen in generators.values():
        decode_latency(gen, prompt, new_tokens, repeats=1, warmup=1)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in generators}
    for _ in range(rounds):
        for name, gen in generators.items():
            runs[name].append(decode_latency(gen, prompt, new_tokens, repeats=1, warmup=0))
    out = {}
    for name, results in runs.items():
        times = [r["latency_ms_median"] for r in results]
        median = statistics.median(times)
        spread = 0.0
        if len(times) >= 2:
            q = statistics.quantiles(times, n=4, method="inclusive")
            spread = q[2] - q[0]
        out[name] = {
            "latency_ms_median": median,
            "latency_ms_spread": spread,
            "tok_s": results[0]["new_tokens"] / (median / 1000.0),
        }
    return out
