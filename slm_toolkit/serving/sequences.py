"""What travels between the event loop and the engine thread: requests, jobs, errors, sampling."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import torch


class QueueFull(Exception):
    """The waiting queue is full: answer 429 with Retry-After."""


class EngineUnavailable(Exception):
    """Still loading, failed to load or shutting down: answer 503."""


class EngineError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    min_tokens: int = 0
    ignore_eos: bool = False


@dataclass(eq=False)
class GenRequest:
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    arrival: float
    deadline: float | None
    cancel_reason: str | None = None  # set from the event loop; read by the engine thread
    generated: int = 0
    last_token: int = 0
    last_time: float = 0.0
    done: bool = False
    rng: torch.Generator | None = None


@dataclass(eq=False)
class ScoreJob:
    prompt_ids: list[int]
    candidates: list[list[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    arrival: float
    deadline: float | None
    cancel_reason: str | None = None
    n_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_tokens = len(self.prompt_ids) + sum(len(c) for c in self.candidates)


def sample_token(row: torch.Tensor, temperature: float, top_p: float, rng: torch.Generator | None) -> int:
    """Greedy when temperature is 0, else temperature + nucleus (top-p) sampling on one logits row."""
    if temperature == 0.0:
        return int(row.argmax())
    probs = torch.softmax(row.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        drop = (sorted_p.cumsum(-1) - sorted_p) > top_p  # keep the smallest set reaching top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=rng))


def deliver(events: list[tuple[asyncio.Queue, tuple]]) -> None:
    """Runs on the event loop: hand a step's events to their requests' queues."""
    for queue, event in events:
        queue.put_nowait(event)


def resolve(fut: asyncio.Future, result: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def resolve_job(job: ScoreJob, result: Any = None, exc: BaseException | None = None) -> None:
    """Complete a score job's future from the engine thread (futures belong to their loop)."""
    try:
        job.loop.call_soon_threadsafe(resolve, job.future, result, exc)
    except RuntimeError:  # the event loop is closed
        pass
