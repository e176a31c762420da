"""The inference engine: one thread owns the model, the event loop never runs model code.

Continuous (iteration-level) batching as in Orca/vLLM, written by hand over our own
`Generator` protocol (vLLM's scheduler is tied to its own model runner): every step
admits waiting requests up to the batch size and a prompt-token budget, prefills them,
decodes one token for every running sequence, merges the new states into the running
batch and drops finished, cancelled or timed-out sequences. Tokens reach each request through
its own asyncio queue (`loop.call_soon_threadsafe`, once per step for all of them).

`scheduler="naive"` is the same loop with a batch of one: one request at a time, from prefill
to its last token (for honest comparison in benchmarks; timeouts and cancellation still apply
at every token).

`batch_invariant=False` (models whose numerics mix the rows of a batch, e.g. ONNX dynamic int8,
which quantizes activations with one scale over the whole batch tensor) keeps every sequence in
a group of its own: each is prefilled and decoded alone, so its greedy output is exactly its
one-at-a-time output, and requests still interleave token by token.

Sampling is `runtime.decoding.Sampler`, the sampler `generate` uses: a request with a seed gives
the same text on both schedulers and through `Generator.generate`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slm_toolkit.runtime.base import Generator
from slm_toolkit.runtime.decoding import next_tokens, token_logprobs
from slm_toolkit.serving.metrics import ServerMetrics
from slm_toolkit.serving.sequences import (
    EngineError,
    EngineUnavailable,
    GenRequest,
    Job,
    QueueFull,
    SamplingParams,
    deliver,
    resolve_job,
    score_job,
)

__all__ = [
    "Engine",
    "EngineError",
    "EngineUnavailable",
    "GenRequest",
    "Job",
    "QueueFull",
    "SamplingParams",
    "score_job",
]

log = logging.getLogger("slm_toolkit.serving")


@dataclass(eq=False)
class _Group:
    """Sequences decoded together: row i of `state` is `reqs[i]`."""

    reqs: list[GenRequest]
    state: Any


class Engine:
    def __init__(
        self,
        load: Callable[[], Generator],
        metrics: ServerMetrics,
        *,
        max_batch_size: int = 8,
        max_queue: int = 64,
        token_budget: int = 4096,
        scheduler: str = "continuous",
        batch_invariant: bool = True,
        warmup_ids: Sequence[int] | None = None,
        on_load_failure: Callable[[], None] | None = None,
    ):
        if scheduler not in ("continuous", "naive"):
            raise ValueError(f"scheduler must be 'continuous' or 'naive', not {scheduler!r}")
        self._load, self.metrics = load, metrics
        self.max_batch_size = 1 if scheduler == "naive" else max_batch_size
        self.max_queue, self.token_budget = max_queue, token_budget
        self.scheduler, self.batch_invariant = scheduler, batch_invariant
        self._warmup_ids, self._on_load_failure = warmup_ids, on_load_failure
        self.generator: Generator | None = None
        self.ready = threading.Event()
        self.load_error: BaseException | None = None
        self._lock = threading.Lock()  # guards _waiting and _stopping
        # the engine thread sleeps on this doorbell when idle: a C-level queue wakes it with one
        # release (a Condition's notify wakes it into a second wait for the notifier's lock)
        self._bell: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: deque[GenRequest | Job] = deque()
        self._groups: list[_Group] = []
        self._running = 0  # sequences in the groups (read by submit without the lock: a hint)
        self._admitting: list[GenRequest] = []  # admitted this step, not yet in a group
        self._outbox: dict[Any, list] = {}  # event loop -> [(queue, event)], flushed once per step
        self._eos: tuple[int, ...] = ()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="slm-engine", daemon=True)

    # ---- called from the event loop -------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def submit(self, req: GenRequest | Job) -> None:
        self.submit_all([req])

    def submit_all(self, reqs: Sequence[GenRequest | Job]) -> None:
        """Queue the sequences of one request (n > 1 or a list of prompts: several): all or none."""
        with self._lock:
            if self._stopping:
                raise EngineUnavailable("the server is shutting down")
            if not self.ready.is_set():
                raise EngineUnavailable(
                    "the model is not loaded yet"
                    if self.load_error is None
                    else f"the model failed to load: {self.load_error}"
                )
            free_slots = max(0, self.max_batch_size - self._running)  # admitted at the next step
            if len(self._waiting) + len(reqs) > self.max_queue + free_slots:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
            self._waiting.extend(reqs)
        self._bell.put(None)

    def cancel(self, req: GenRequest | Job, reason: str = "cancelled") -> None:
        if req.cancel_reason is None:
            req.cancel_reason = reason
        self._bell.put(None)

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; finish (drain=True) or cancel what was accepted; join the thread."""
        with self._lock:
            self._stopping = True
            if not drain:
                for item in list(self._waiting) + [r for g in self._groups for r in g.reqs]:
                    item.cancel_reason = item.cancel_reason or "cancelled"
        self._bell.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the engine thread ----------------------------------------------------------
    def _main(self) -> None:
        try:
            self.generator = self._load()
            self._eos = tuple(self.generator.eos_token_ids)
            self._warmup()
        except BaseException as exc:  # noqa: BLE001 - reported through /health, /ready and the CLI
            log.exception("loading the model failed")
            self.load_error = exc
            if self._on_load_failure:
                self._on_load_failure()
            return
        self.ready.set()
        log.info(
            "model loaded and warmed up (%s scheduler%s)",
            self.scheduler,
            "" if self.batch_invariant else ", one sequence per model call: this model is not batch-invariant",
        )
        while True:
            with self._lock:
                idle = not (self._waiting or self._groups or self._stopping)
                if self._stopping and not self._waiting and not self._groups:
                    break
            if idle:
                self._bell.get()  # a submit, cancel or stop rang it (rings while we looked count too)
                while not self._bell.empty():
                    self._bell.get_nowait()
                continue
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - a bug must not kill the server
                log.exception("engine step failed")
                for req in [r for g in self._groups for r in g.reqs] + self._admitting:
                    self._fail(req, 500, f"internal error in the engine: {exc}")
                self._groups, self._admitting = [], []
            self._flush()
            self._gauges()

    def _emit(self, req: GenRequest, event: tuple) -> None:
        self._outbox.setdefault(req.loop, []).append((req.events, event))

    def _flush(self) -> None:
        """One wake-up per event loop for all the tokens of a step (not one per token)."""
        outbox, self._outbox = self._outbox, {}
        for loop, events in outbox.items():
            try:
                loop.call_soon_threadsafe(deliver, events)
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                pass

    def _warmup(self) -> None:
        gen = self.generator
        ids = list(self._warmup_ids or [gen.pad_token_id or 0])
        if self.batch_invariant:
            logits, state = gen.prefill([ids, ids + ids])
            _, state = gen.decode_step(np.asarray(logits).argmax(-1).tolist(), state)
            _, other = gen.prefill([ids])
            gen.select(gen.merge([state, other]), [0, 2])
        else:
            logits, state = gen.prefill([ids])
            gen.decode_step(np.asarray(logits).argmax(-1).tolist(), state)
        gen.score(ids, [ids])

    def _gauges(self) -> None:
        self._running = sum(len(g.reqs) for g in self._groups)
        self.metrics.running.set(self._running)
        with self._lock:
            self.metrics.waiting.set(len(self._waiting))

    @staticmethod
    def _expired(item: GenRequest | Job, now: float) -> bool:
        return item.deadline is not None and now > item.deadline

    def _retire(self, item: GenRequest | Job, now: float) -> bool:
        """Finish a cancelled or timed-out item; True when it was."""
        if isinstance(item, Job):
            if item.cancel_reason or self._expired(item, now):
                error = (
                    EngineError(499, "cancelled") if item.cancel_reason else EngineError(408, "the request timed out")
                )
                resolve_job(item, exc=error)
                self.metrics.finished.labels("cancelled" if item.cancel_reason else "timeout").inc()
                return True
            return False
        if item.cancel_reason:
            self._finish(item, item.cancel_reason, now)
        elif self._expired(item, now):
            self._fail(item, 408, "the request timed out", reason="timeout")
        return item.done

    def _admit(self) -> tuple[list[Job], list[GenRequest]]:
        """Take waiting requests up to the free batch slots and the prompt-token budget (FIFO)."""
        jobs, new, budget = [], [], self.token_budget
        free = self.max_batch_size - sum(len(g.reqs) for g in self._groups)
        now = time.perf_counter()
        with self._lock:
            while self._waiting:
                item = self._waiting[0]
                if self._retire(item, now):
                    self._waiting.popleft()
                    continue
                cost = item.n_tokens if isinstance(item, Job) else len(item.prompt_ids)
                if (jobs or new) and cost > budget:
                    break
                if isinstance(item, GenRequest):
                    if free <= 0:
                        break
                    free -= 1
                    new.append(item)
                else:
                    jobs.append(item)
                budget -= cost
                self._waiting.popleft()
        for item in jobs + new:
            self.metrics.queue_time.observe(now - item.arrival)
            self.metrics.prompt_tokens.inc(len(item.prompt_ids))
        return jobs, new

    def _step(self) -> None:
        jobs, new = self._admit()
        self._admitting = new
        for job in jobs:
            self._run_job(job)
        now = time.perf_counter()
        for group in self._groups:
            for req in group.reqs:
                self._retire(req, now)
        self._drop_done()
        if self._groups:
            for group in list(self._groups):
                logits = self._decode(group)
                if logits is not None:
                    self._sample(group.reqs, logits)
            self._flush()  # running requests get their token before the new prompts prefill
        if new:
            for req in new:
                req.sampler = req.params.sampler()
            for reqs in [new] if self.batch_invariant else [[r] for r in new]:
                logits, state, ok = self._prefill(reqs)
                if ok:
                    self._sample(ok, logits)
                    if self.batch_invariant and self._groups:
                        group = self._groups[0]
                        group.state = self.generator.merge([group.state, state])
                        group.reqs = group.reqs + ok
                    else:
                        self._groups.append(_Group(ok, state))
        self._admitting = []
        if self._groups:
            self.metrics.batch_size.observe(sum(len(g.reqs) for g in self._groups))
        self._drop_done()

    def _prefill(self, new: list[GenRequest]) -> tuple[Any, Any, list[GenRequest]]:
        """Prefill the admitted prompts together; on failure, one by one, so one bad request fails alone."""
        gen = self.generator
        try:
            logits, state = gen.prefill([r.prompt_ids for r in new])
            return logits, state, new
        except Exception:  # noqa: BLE001
            if len(new) == 1:
                log.exception("prefill failed")
                self._fail(new[0], 500, "the model failed on this request")
                return None, None, []
        rows, states, ok = [], [], []
        for req in new:
            try:
                logits, state = gen.prefill([req.prompt_ids])
            except Exception as exc:  # noqa: BLE001
                log.exception("prefill failed")
                self._fail(req, 500, f"the model failed on this request: {exc}")
                continue
            rows.append(np.asarray(logits))
            states.append(state)
            ok.append(req)
        if not ok:
            return None, None, []
        return np.concatenate(rows), (states[0] if len(states) == 1 else gen.merge(states)), ok

    def _decode(self, group: _Group) -> Any:
        """One decode step for a group; on failure, sequence by sequence (errors fail alone)."""
        gen = self.generator
        try:
            logits, group.state = gen.decode_step([r.last_token for r in group.reqs], group.state)
            return logits
        except Exception:  # noqa: BLE001
            log.exception("decode step failed; retrying sequence by sequence")
        rows, states, ok = [], [], []
        for i, req in enumerate(group.reqs):
            try:
                one = gen.select(group.state, [i]) if len(group.reqs) > 1 else group.state
                logits, state = gen.decode_step([req.last_token], one)
            except Exception as exc:  # noqa: BLE001
                self._fail(req, 500, f"the model failed on this request: {exc}")
                continue
            rows.append(np.asarray(logits))
            states.append(state)
            ok.append(req)
        group.reqs = ok
        group.state = None if not ok else states[0] if len(ok) == 1 else gen.merge(states)
        return np.concatenate(rows) if rows else None

    def _sample(self, reqs: list[GenRequest], logits: Any) -> None:
        logits = np.asarray(logits)
        eos = self._eos
        banned = [eos if (eos and not r.params.ignore_eos and r.generated < r.params.min_tokens) else () for r in reqs]
        try:
            tokens = next_tokens(logits, [r.sampler for r in reqs], banned)
        except Exception:  # noqa: BLE001 - find the row that fails, fail it alone
            tokens = []
            for i, req in enumerate(reqs):
                try:
                    tokens.append(next_tokens(logits[i : i + 1], [req.sampler], [banned[i]])[0])
                except Exception as exc:  # noqa: BLE001
                    self._fail(req, 500, f"sampling failed: {exc}")
                    tokens.append(None)
        now = time.perf_counter()
        for i, (req, token) in enumerate(zip(reqs, tokens)):
            if token is None:
                continue
            top = req.params.logprobs
            info = token_logprobs(logits[i], token, top) if top is not None else None
            self._accept(req, token, info, now)

    def _accept(self, req: GenRequest, token: int, info: Any, now: float) -> None:
        if token in self._eos and not req.params.ignore_eos:
            self._finish(req, "stop", now)
            return
        req.generated += 1
        req.last_token = token
        if req.generated == 1:
            self.metrics.ttft.observe(now - req.arrival)
        else:
            self.metrics.itl.observe(now - req.last_time)
        req.last_time = now
        self.metrics.generation_tokens.inc()
        self._emit(req, ("token", req.index, token, info))
        if req.generated >= req.params.max_tokens:
            self._finish(req, "length", now)

    def _finish(self, req: GenRequest, reason: str, now: float) -> None:
        if req.done:
            return
        req.done = True
        self.metrics.e2e.observe(now - req.arrival)
        self.metrics.finished.labels(reason).inc()
        self._emit(req, ("finish", req.index, reason))

    def _fail(self, req: GenRequest, status: int, message: str, reason: str = "error") -> None:
        if req.done:
            return
        req.done = True
        self.metrics.finished.labels(reason).inc()
        self._emit(req, ("error", req.index, status, message))

    def _drop_done(self) -> None:
        groups = []
        for group in self._groups:
            keep = [i for i, r in enumerate(group.reqs) if not r.done]
            if not keep:
                continue
            if len(keep) < len(group.reqs):
                group.state = self.generator.select(group.state, keep)
                group.reqs = [group.reqs[i] for i in keep]
            groups.append(group)
        self._groups = groups
        self._running = sum(len(g.reqs) for g in groups)

    def _run_job(self, job: Job) -> None:
        try:
            result = job.run(self.generator)
        except Exception as exc:  # noqa: BLE001
            log.exception("job failed")
            resolve_job(job, exc=EngineError(500, f"the model failed on this request: {exc}"))
            self.metrics.finished.labels("error").inc()
            return
        self.metrics.finished.labels("score").inc()
        resolve_job(job, result)
