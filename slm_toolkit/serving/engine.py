"""The inference engine: one thread owns the model, the event loop never runs model code.

Continuous (iteration-level) batching as in Orca/vLLM, written by hand over our own
`Generator` protocol (vLLM's scheduler is tied to its own model runner): every step
admits waiting requests up to the batch size and a prompt-token budget, prefills them,
decodes one token for every running sequence, merges the new states into the running
batch and drops finished or cancelled sequences. Tokens reach each request through its
own asyncio queue (`loop.call_soon_threadsafe`). `scheduler="naive"` serves one request
at a time with plain `generate`, for honest comparison in benchmarks.

Events put on a request's queue: ("token", id), ("finish", reason), ("error", status, message).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch

from slm_toolkit.runtime.base import GenerationConfig, Generator
from slm_toolkit.serving.metrics import ServerMetrics
from slm_toolkit.serving.sequences import (  # noqa: F401
    EngineError,
    EngineUnavailable,
    GenRequest,
    QueueFull,
    SamplingParams,
    ScoreJob,
    deliver,
    resolve_job,
    sample_token,
)

log = logging.getLogger("slm_toolkit.serving")


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
        warmup_ids: Sequence[int] | None = None,
        on_load_failure: Callable[[], None] | None = None,
    ):
        if scheduler not in ("continuous", "naive"):
            raise ValueError(f"scheduler must be 'continuous' or 'naive', not {scheduler!r}")
        self._load, self.metrics = load, metrics
        self.max_batch_size, self.max_queue, self.token_budget = max_batch_size, max_queue, token_budget
        self.scheduler, self._warmup_ids, self._on_load_failure = scheduler, warmup_ids, on_load_failure
        self.generator: Generator | None = None
        self.ready = threading.Event()
        self.load_error: BaseException | None = None
        self._cv = threading.Condition()
        self._waiting: deque[GenRequest | ScoreJob] = deque()
        self._batch: list[GenRequest] = []
        self._state: Any = None
        self._admitting: list[GenRequest] = []  # admitted this step, not yet in the batch
        self._outbox: dict[Any, list] = {}  # event loop -> [(queue, event)], flushed once per batch of tokens
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

    def submit(self, req: GenRequest | ScoreJob) -> None:
        with self._cv:
            if self._stopping:
                raise EngineUnavailable("the server is shutting down")
            if not self.ready.is_set():
                raise EngineUnavailable(
                    "the model is not loaded yet"
                    if self.load_error is None
                    else f"the model failed to load: {self.load_error}"
                )
            free_slots = max(0, self.max_batch_size - len(self._batch))  # admitted at the next step
            if len(self._waiting) >= self.max_queue + free_slots:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
            self._waiting.append(req)
            self.metrics.waiting.set(len(self._waiting))
            self._cv.notify()

    def cancel(self, req: GenRequest | ScoreJob, reason: str = "cancelled") -> None:
        if req.cancel_reason is None:
            req.cancel_reason = reason
        with self._cv:
            self._cv.notify()

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; finish (drain=True) or cancel what was accepted; join the thread."""
        with self._cv:
            self._stopping = True
            if not drain:
                for item in list(self._waiting) + self._batch:
                    item.cancel_reason = item.cancel_reason or "cancelled"
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the engine thread ----------------------------------------------------------
    def _main(self) -> None:
        try:
            self.generator = self._load()
            self._warmup()
        except BaseException as exc:  # noqa: BLE001 - reported through /health, /ready and the CLI
            log.exception("loading the model failed")
            self.load_error = exc
            if self._on_load_failure:
                self._on_load_failure()
            return
        self.ready.set()
        log.info("model loaded and warmed up (%s scheduler)", self.scheduler)
        while True:
            with self._cv:
                while not (self._waiting or self._batch or self._stopping):
                    self._cv.wait()
                if self._stopping and not self._waiting and not self._batch:
                    break
            try:
                self._step_naive() if self.scheduler == "naive" else self._step()
            except Exception as exc:  # noqa: BLE001 - a bug must not kill the server
                log.exception("engine step failed")
                for req in self._batch + self._admitting:
                    self._fail(req, 500, f"internal error in the engine: {exc}")
                self._batch, self._state, self._admitting = [], None, []
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
        if self.scheduler == "naive":
            gen.generate([ids], GenerationConfig(max_new_tokens=2))
            return
        logits, state = gen.prefill([ids, ids + ids])
        _, state = gen.decode_step(torch.as_tensor(logits).argmax(-1).tolist(), state)
        _, other = gen.prefill([ids])
        gen.select(gen.merge([state, other]), [0, 2])
        gen.score(ids, [ids])

    def _gauges(self) -> None:
        self.metrics.running.set(len(self._batch))
        with self._cv:
            self.metrics.waiting.set(len(self._waiting))

    def _expired(self, item: GenRequest | ScoreJob, now: float) -> bool:
        return item.deadline is not None and now > item.deadline

    def _retire(self, item: GenRequest | ScoreJob, now: float) -> bool:
        """Finish a cancelled or timed-out item; True when it was."""
        if isinstance(item, ScoreJob):
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

    def _admit(self) -> tuple[list[ScoreJob], list[GenRequest]]:
        """Take waiting requests up to the free batch slots and the prompt-token budget (FIFO)."""
        jobs, new, budget = [], [], self.token_budget
        free = self.max_batch_size - len(self._batch)
        now = time.perf_counter()
        with self._cv:
            while self._waiting:
                item = self._waiting[0]
                if self._retire(item, now):
                    self._waiting.popleft()
                    continue
                cost = item.n_tokens if isinstance(item, ScoreJob) else len(item.prompt_ids)
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
            self._score(job)
        now = time.perf_counter()
        for req in self._batch:
            self._retire(req, now)
        self._drop_done()
        if self._batch:
            logits = self._decode()
            self._sample(self._batch, logits)
            self._flush()  # running requests get their token before the new prompts prefill
        if new:
            logits, state, new = self._prefill(new)
            if new:
                self._sample(new, logits)
                self._state = self.generator.merge([self._state, state]) if self._batch else state
                self._batch = self._batch + new
        self._admitting = []
        if self._batch:
            self.metrics.batch_size.observe(len(self._batch))
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
            rows.append(torch.as_tensor(logits))
            states.append(state)
            ok.append(req)
        if not ok:
            return None, None, []
        return torch.cat(rows), (states[0] if len(states) == 1 else gen.merge(states)), ok

    def _decode(self) -> Any:
        """One decode step for the running batch; on failure, sequence by sequence (errors fail alone)."""
        gen = self.generator
        try:
            logits, self._state = gen.decode_step([r.last_token for r in self._batch], self._state)
            return logits
        except Exception:  # noqa: BLE001
            log.exception("decode step failed; retrying sequence by sequence")
        rows, states, ok = [], [], []
        for i, req in enumerate(self._batch):
            try:
                logits, state = gen.decode_step([req.last_token], gen.select(self._state, [i]))
            except Exception as exc:  # noqa: BLE001
                self._fail(req, 500, f"the model failed on this request: {exc}")
                continue
            rows.append(torch.as_tensor(logits))
            states.append(state)
            ok.append(req)
        self._batch = ok
        self._state = None if not ok else states[0] if len(ok) == 1 else gen.merge(states)
        return torch.cat(rows) if rows else None

    def _sample(self, reqs: list[GenRequest], logits: Any) -> None:
        logits = torch.as_tensor(logits)
        greedy = logits.argmax(-1).tolist()  # one call for every greedy row
        eos = list(self.generator.eos_token_ids)
        now = time.perf_counter()
        for i, req in enumerate(reqs):
            p = req.params
            try:
                mask_eos = bool(eos) and req.generated < p.min_tokens
                if p.temperature == 0.0 and not mask_eos:
                    token = greedy[i]
                else:
                    row = logits[i].float().clone()
                    if mask_eos:
                        row[eos] = float("-inf")
                    if p.temperature > 0.0 and req.rng is None:
                        req.rng = torch.Generator(device=row.device)
                        req.rng.manual_seed(p.seed) if p.seed is not None else req.rng.seed()
                    token = sample_token(row, p.temperature, p.top_p, req.rng)
            except Exception as exc:  # noqa: BLE001
                self._fail(req, 500, f"sampling failed: {exc}")
                continue
            self._accept(req, token, now)

    def _accept(self, req: GenRequest, token: int, now: float) -> None:
        if token in self.generator.eos_token_ids and not req.params.ignore_eos:
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
        self._emit(req, ("token", token))
        if req.generated >= req.params.max_tokens:
            self._finish(req, "length", now)

    def _finish(self, req: GenRequest, reason: str, now: float) -> None:
        if req.done:
            return
        req.done = True
        self.metrics.e2e.observe(now - req.arrival)
        self.metrics.finished.labels(reason).inc()
        self._emit(req, ("finish", reason))

    def _fail(self, req: GenRequest, status: int, message: str, reason: str = "error") -> None:
        if req.done:
            return
        req.done = True
        self.metrics.finished.labels(reason).inc()
        self._emit(req, ("error", status, message))

    def _drop_done(self) -> None:
        keep = [i for i, r in enumerate(self._batch) if not r.done]
        if len(keep) == len(self._batch):
            return
        self._state = self.generator.select(self._state, keep) if keep else None
        self._batch = [self._batch[i] for i in keep]

    def _score(self, job: ScoreJob) -> None:
        try:
            result = self.generator.score(job.prompt_ids, job.candidates)
        except Exception as exc:  # noqa: BLE001
            log.exception("score failed")
            resolve_job(job, exc=EngineError(500, f"scoring failed: {exc}"))
            self.metrics.finished.labels("error").inc()
            return
        self.metrics.finished.labels("score").inc()
        resolve_job(job, [float(x) for x in result])

    def _step_naive(self) -> None:
        """One request at a time with plain generate (no batching), for comparison."""
        now = time.perf_counter()
        with self._cv:
            item = self._waiting.popleft() if self._waiting else None
        if item is None or self._retire(item, now):
            return
        self.metrics.queue_time.observe(now - item.arrival)
        self.metrics.prompt_tokens.inc(len(item.prompt_ids))
        if isinstance(item, ScoreJob):
            self._score(item)
            return
        self.metrics.running.set(1)
        self.metrics.batch_size.observe(1)
        p = item.params
        cfg = GenerationConfig(
            max_new_tokens=p.max_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            seed=p.seed,
            min_new_tokens=p.min_tokens,
            ignore_eos=p.ignore_eos,
        )
        try:
            tokens = self.generator.generate([item.prompt_ids], cfg)[0]
        except Exception as exc:  # noqa: BLE001
            log.exception("generate failed")
            self._fail(item, 500, f"the model failed on this request: {exc}")
            return
        now = time.perf_counter()
        for token in tokens:
            if item.done:
                break
            self._accept(item, int(token), now)
        self._finish(item, "stop", now)
