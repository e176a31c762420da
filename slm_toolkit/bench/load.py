"""Load generation: closed loop (a fixed number of requests in flight) and open loop (Poisson
arrivals with Gamma burstiness, as vLLM's `bench serve --request-rate --burstiness`).

Warm-up requests go first and are dropped from the figures. Each request records when it was
scheduled and when it actually left: in the closed loop a slot is scheduled the moment the
previous request on it completes, in the open loop at its arrival time; a large gap means the
client, not the server, is the bottleneck (metrics.saturation_warning).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from slm_toolkit.bench.client import Endpoint, Prompt, make_client, send
from slm_toolkit.bench.metrics import RequestResult


@dataclass
class Level:
    """One load level: closed loop at `concurrency`, or open loop at `rate` (req/s) capped at
    `concurrency` in flight (None: no cap)."""

    concurrency: int | None
    rate: float | None = None
    burstiness: float = 1.0

    @property
    def name(self) -> str:
        if self.rate is None:
            return f"c{self.concurrency}"
        cap = f"_c{self.concurrency}" if self.concurrency else ""
        return f"r{self.rate:g}{cap}"


def arrival_times(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Send offsets (s): Gamma(shape=burstiness, scale=1/(rate*burstiness)) gaps, mean 1/rate;
    burstiness 1 is a Poisson process, < 1 burstier, > 1 more regular."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
    return out


async def _warmup(client, ep: Endpoint, prompts: list[Prompt], width: int) -> None:
    sem = asyncio.Semaphore(max(width, 1))
    t0 = time.perf_counter()

    async def one(i, p):
        async with sem:
            await send(client, ep, p, i, t0, 0.0)

    await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))


OnDone = Callable[[RequestResult], None] | None  # called as each measured request completes (progress)


async def closed_loop(
    client,
    ep: Endpoint,
    prompts: list[Prompt],
    concurrency: int,
    duration_s: float | None = None,
    on_done: OnDone = None,
) -> list[RequestResult]:
    """`concurrency` workers, each sending its next prompt as soon as its last one completes;
    with duration_s, no new request starts after that many seconds."""
    queue = list(enumerate(prompts))
    queue.reverse()
    results: list[RequestResult] = []
    t0 = time.perf_counter()

    async def worker():
        scheduled = time.perf_counter() - t0
        while queue:
            if duration_s is not None and time.perf_counter() - t0 >= duration_s:
                return
            i, p = queue.pop()
            res = await send(client, ep, p, i, t0, scheduled)
            results.append(res)
            if on_done:
                on_done(res)
            scheduled = time.perf_counter() - t0

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sorted(results, key=lambda r: r.index)


async def open_loop(
    client,
    ep: Endpoint,
    prompts: list[Prompt],
    rate: float,
    burstiness: float,
    seed: int,
    cap: int | None = None,
    duration_s: float | None = None,
    on_done: OnDone = None,
) -> list[RequestResult]:
    """Send prompt i at arrival_times[i] (never waiting for completions, except for the optional
    in-flight cap, whose wait counts as send lag)."""
    times = arrival_times(len(prompts), rate, burstiness, seed)
    sem = asyncio.Semaphore(cap) if cap else None
    t0 = time.perf_counter()
    tasks = []

    async def one(i, p, at):
        if sem is None:
            res = await send(client, ep, p, i, t0, at)
        else:
            async with sem:
                res = await send(client, ep, p, i, t0, at)
        if on_done:
            on_done(res)
        return res

    for i, (p, at) in enumerate(zip(prompts, times)):
        if duration_s is not None and at >= duration_s:
            break
        delay = at - (time.perf_counter() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, p, at)))
    return list(await asyncio.gather(*tasks))


async def run_level(
    ep: Endpoint,
    level: Level,
    prompts: list[Prompt],
    warmup: list[Prompt],
    seed: int,
    duration_s: float | None = None,
    on_done: OnDone = None,
) -> tuple[list[RequestResult], float]:
    """Warm up, then measure one level. Returns (results, wall seconds of the measured part)."""
    width = level.concurrency or 64
    async with make_client(width, ep.timeout_s) as client:
        if warmup:
            await _warmup(client, ep, warmup, min(width, len(warmup)))
        start = time.perf_counter()
        if level.rate is None:
            results = await closed_loop(client, ep, prompts, level.concurrency or 1, duration_s, on_done)
        else:
            results = await open_loop(
                client, ep, prompts, level.rate, level.burstiness, seed, level.concurrency, duration_s, on_done
            )
        return results, time.perf_counter() - start
