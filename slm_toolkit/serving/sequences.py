"""What travels between the event loop and the engine thread: requests, jobs, errors.

Sampling itself is `runtime.decoding.Sampler`, the one sampler every path uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slm_toolkit.runtime.decoding import Sampler


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
    seed: int | tuple[int, ...] | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: no logprobs; k: the chosen token's and the k most likely

    def sampler(self) -> Sampler:
        return Sampler(self.temperature, self.top_p, self.seed, self.presence_penalty, self.frequency_penalty)


@dataclass(eq=False)
class GenRequest:
    """One sequence to generate. Events on `events`: ("token", index, id, logprobs or None),
    ("finish", index, reason), ("error", index, status, message)."""

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
    sampler: Sampler | None = None  # made in the engine thread at admission
    index: int = 0  # the choice this sequence answers (n > 1 and prompt lists share one queue)


@dataclass(eq=False)
class Job:
    """Work on the model that is not a generation (scoring, prompt log-probabilities): `run`
    gets the Generator in the engine thread; its result (or error) resolves `future`."""

    run: Callable[[Any], Any]
    n_tokens: int  # prompt-token budget it uses
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    arrival: float
    deadline: float | None
    cancel_reason: str | None = None
    prompt_ids: list[int] = field(default_factory=list)  # for the prompt-token counter


def score_job(prompt_ids: list[int], candidates: list[list[int]], loop, future, arrival, deadline) -> Job:
    """Sum of log-probabilities of each candidate after the prompt (Generator.score)."""
    return Job(
        lambda gen: [float(x) for x in gen.score(prompt_ids, candidates)],
        len(prompt_ids) + sum(len(c) for c in candidates),
        loop,
        future,
        arrival,
        deadline,
        prompt_ids=list(prompt_ids),
    )


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


def resolve_job(job: Job, result: Any = None, exc: BaseException | None = None) -> None:
    """Complete a job's future from the engine thread (futures belong to their loop)."""
    try:
        job.loop.call_soon_threadsafe(resolve, job.future, result, exc)
    except RuntimeError:  # the event loop is closed
        pass
