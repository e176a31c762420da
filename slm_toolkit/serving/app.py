"""The FastAPI app: OpenAI-compatible routes in front of the engine thread.

The event loop only parses, tokenizes short prompts, detokenizes and streams; model code runs
in the engine's thread, and prompts longer than `OFFLOAD_CHARS` are tokenized in a worker
thread (the tokenizer releases the GIL), so one large prompt never stalls other requests. A
prompt with more characters than the context could hold (max_model_len x the longest token's
length) is refused before tokenizing. Every error is answered in OpenAI's
{"error": {message, type, param, code}} shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from slm_toolkit.runtime.base import Generator
from slm_toolkit.runtime.decoding import prompt_logprobs
from slm_toolkit.serving import schemas as S
from slm_toolkit.serving.chat import ChatFormat, encode
from slm_toolkit.serving.config import ServeConfig
from slm_toolkit.serving.engine import (
    Engine,
    EngineError,
    EngineUnavailable,
    GenRequest,
    Job,
    QueueFull,
    SamplingParams,
    score_job,
)
from slm_toolkit.serving.metrics import ServerMetrics
from slm_toolkit.serving.middleware import Guard
from slm_toolkit.serving.openapi import document
from slm_toolkit.serving.text import TextAssembler, token_bytes

log = logging.getLogger("slm_toolkit.serving")
OFFLOAD_CHARS = 8192  # longer prompts are tokenized off the event loop


class Service:
    """What the routes share: tokenizer, engine, metrics, limits."""

    def __init__(
        self,
        load: Callable[[], Generator],
        tokenizer,
        cfg: ServeConfig,
        model_name: str,
        accepted_names: Iterable[str] = (),
        reasoning_marker: str | None = None,
        batch_invariant: bool = True,
        on_load_failure: Callable[[], None] | None = None,
    ):
        self.tokenizer, self.cfg, self.model_name = tokenizer, cfg, model_name
        self.accepted = {model_name, *accepted_names}
        self.metrics = ServerMetrics()
        special = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        first = next((i for i in special if i is not None), 0)
        self.engine = Engine(
            load,
            self.metrics,
            max_batch_size=cfg.max_batch_size,
            max_queue=cfg.max_queue,
            token_budget=cfg.token_budget,
            scheduler=cfg.scheduler,
            batch_invariant=batch_invariant,
            warmup_ids=[first] * 4,
            on_load_failure=on_load_failure,
        )
        self._hidden = {i for i in special if i is not None}
        self.chat = ChatFormat(tokenizer, reasoning_marker)
        # the most characters one token can stand for: a prompt longer than max_model_len times
        # this cannot fit, whatever it tokenizes to
        self.chars_per_token = max((len(t) for t in tokenizer.get_vocab()), default=1) or 1
        self._vocab = len(tokenizer)
        self._token_text: dict[int, str] = {}
        # the Rust tokenizer's decode, as the fast tokenizer's own decode calls it, without the
        # wrapper's per-call Python work (three decodes per streamed token, each a cold code path)
        self._rust_decode = getattr(getattr(tokenizer, "backend_tokenizer", None), "decode", None)

    # ---- text <-> ids ---------------------------------------------------------------
    def max_model_len(self) -> int:
        model_len = self.engine.generator.max_length if self.engine.generator else None
        limits = [x for x in (self.cfg.max_model_len, model_len) if x]
        return min(limits) if limits else 2048

    def decode(self, ids: list[int]) -> str:
        return self._decode([i for i in ids if i not in self._hidden])

    def _decode(self, ids: list[int]) -> str:
        """tokenizer.decode(ids, skip_special_tokens=False), the same text."""
        if self._rust_decode is None:
            return self.tokenizer.decode(ids, skip_special_tokens=False)
        text = self._rust_decode(ids, skip_special_tokens=False)
        return self.tokenizer.clean_up_tokenization(text) if self.tokenizer.clean_up_tokenization_spaces else text

    def token_text(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self._decode([token])
        return text

    def check_chars(self, chars: int, param: str) -> None:
        """Refuse, before tokenizing, text too long for the context whatever it tokenizes to."""
        limit = self.max_model_len()
        if chars > limit * self.chars_per_token:
            raise S.RequestError(
                f"{param} is {chars} characters: more than this model's maximum context length of {limit} "
                f"tokens can hold (a token stands for at most {self.chars_per_token} characters)",
                param=param,
                code="context_length_exceeded",
            )

    async def off_loop(self, chars: int, fn, *args):
        """fn(*args) here when the text is short, else in a worker thread (long prompts)."""
        if chars <= OFFLOAD_CHARS:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    async def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            self.check_chars(len(prompt), "prompt")
            return await self.off_loop(len(prompt), self._encode, prompt)
        bad = next((i for i in prompt if not 0 <= i < self._vocab), None)
        if bad is not None:
            raise S.RequestError(f"prompt: token id {bad} is outside the vocabulary [0, {self._vocab})", param="prompt")
        return list(prompt)

    def _encode(self, text: str) -> list[int]:
        return encode(self.tokenizer, text, add_special_tokens=True)

    async def encode_chat(self, messages: list[S.ChatMessage]) -> list[int]:
        chars = sum(len(m.text()) for m in messages)
        self.check_chars(chars, "messages")
        return await self.off_loop(chars, self.chat.prompt_ids, messages)

    def check_model(self, name: str | None) -> None:
        if name is not None and name not in self.accepted:
            raise S.RequestError(
                f"model '{name}' does not exist; this server serves '{self.model_name}'",
                404,
                param="model",
                code="model_not_found",
            )

    def model_card(self) -> dict:
        return {
            "id": self.model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "slm-toolkit",
            "max_model_len": self.max_model_len(),
        }

    # ---- generation ------------------------------------------------------------------
    def requests_for(self, body: S.SamplingFields, prompts: list[list[int]]) -> list[GenRequest]:
        """n sequences per prompt, sharing one event queue; choice index = prompt x n + j. Choice 0
        of a prompt samples with `seed` itself (as a request with n=1 would), choice j with (seed, j)."""
        limit = self.max_model_len()
        loop, queue, now = asyncio.get_running_loop(), asyncio.Queue(), time.perf_counter()
        deadline = now + self.cfg.request_timeout
        reqs = []
        for p, ids in enumerate(prompts):
            wanted = body.token_limit()
            max_tokens = wanted if wanted is not None else limit - len(ids)
            if len(ids) + max(max_tokens, 1) > limit:
                param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
                raise S.RequestError(
                    f"This model's maximum context length is {limit} tokens. However, you requested "
                    f"{len(ids) + max_tokens} tokens ({len(ids)} in the prompt, {max_tokens} for the completion). "
                    f"Please reduce the prompt or {param}.",
                    param=param,
                    code="context_length_exceeded",
                )
            for j in range(body.n):
                seed = body.seed if body.seed is None or j == 0 else (body.seed, j)
                params = SamplingParams(
                    max_tokens=max_tokens,
                    temperature=body.temperature,
                    top_p=body.top_p,
                    seed=seed,
                    min_tokens=min(body.min_tokens, max_tokens),
                    ignore_eos=body.ignore_eos,
                    presence_penalty=body.presence_penalty,
                    frequency_penalty=body.frequency_penalty,
                    logprobs=body.top_logprobs_count(),
                )
                reqs.append(GenRequest(ids, params, loop, queue, now, deadline, index=p * body.n + j))
        return reqs

    def job(self, run: Callable, prompt: list[int], n_tokens: int) -> Job:
        loop, now = asyncio.get_running_loop(), time.perf_counter()
        return Job(run, n_tokens, loop, loop.create_future(), now, now + self.cfg.request_timeout, prompt_ids=prompt)

    async def wait_job(self, job: Job):
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self.cfg.request_timeout + 5.0)
        except asyncio.TimeoutError:
            self.engine.cancel(job)
            raise EngineError(408, "the request timed out") from None

    async def bursts(
        self, reqs: list[GenRequest], asms: list[TextAssembler]
    ) -> AsyncIterator[list[tuple[int, str, str | None, list]]]:
        """Lists of (choice, text delta, finish reason or None, [(token, logprobs)]) until every
        choice ended; cancels what is left if abandoned. A list holds what is ready at once (one
        delta per choice): a stream that fell behind costs one SSE write, not one per token."""
        queue = reqs[0].events
        deadline = max(r.deadline for r in reqs)
        pending: dict[int, list] = {}
        out: list[tuple[int, str, str | None, list]] = []
        ended: set[int] = set()
        want_info = reqs[0].params.logprobs is not None
        try:
            while len(ended) < len(reqs):
                if queue.empty() and (pending or out):
                    out += [(i, text, None, infos) for i, (text, infos) in pending.items()]
                    pending.clear()
                    yield out
                    out = []
                event = queue.get_nowait() if not queue.empty() else await _next_event(queue, deadline)
                kind, i = event[0], event[1]
                if i in ended:
                    continue  # the engine's finish after a stop string ended the choice here
                asm = asms[i]
                if kind == "token":
                    entry = pending.setdefault(i, ["", []])
                    entry[0] += asm.add(event[2])
                    if want_info:
                        entry[1].append((event[2], event[3]))
                    if asm.stopped:
                        self.engine.cancel(reqs[i], "stop")
                        ended.add(i)
                        text, infos = pending.pop(i)
                        out.append((i, text, "stop", infos))
                elif kind == "finish":
                    ended.add(i)
                    text, infos = pending.pop(i, ("", []))
                    out.append((i, text + asm.flush(), event[2], infos))
                else:
                    out += [(j, text, None, infos) for j, (text, infos) in pending.items()]
                    pending.clear()
                    ended.update(range(len(reqs)))
                    if out:
                        yield out
                    raise EngineError(event[2], event[3])
            if out:
                yield out
        finally:
            if len(ended) < len(reqs):  # client gone, timed out or cancelled: drop the sequences
                for r in reqs:
                    self.engine.cancel(r, "cancelled")

    async def collect(self, request: Request, reqs: list[GenRequest], asms: list[TextAssembler]) -> list[tuple]:
        """Whole output of a non-streaming request: per choice (text, finish, [(token, logprobs)]);
        a client disconnect cancels it."""

        async def consume():
            out = [["", None, []] for _ in reqs]
            async for burst in self.bursts(reqs, asms):
                for i, delta, finish, infos in burst:
                    out[i][0] += delta
                    out[i][2] += infos
                    if finish:
                        out[i][1] = finish
            return out

        task = asyncio.create_task(consume())
        watcher = asyncio.create_task(_wait_disconnect(request))
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        watcher.cancel()
        if not task.done():
            task.cancel()
            for r in reqs:
                self.engine.cancel(r, "cancelled")
            raise EngineError(499, "client disconnected")
        return task.result()

    # ---- logprobs in OpenAI's two shapes ---------------------------------------------
    def completion_logprobs(self, entries: list[tuple[int, tuple | None]], offset: int) -> dict:
        tokens, lps, tops, offsets = [], [], [], []
        for token, info in entries:
            text = self.token_text(token)
            tokens.append(text)
            offsets.append(offset)
            offset += len(text)
            if info is None:
                lps.append(None)
                tops.append(None)
            else:
                lps.append(info[0])
                tops.append({self.token_text(t): lp for t, lp in info[1]})
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}

    def chat_logprobs(self, entries: list[tuple[int, tuple]]) -> dict:
        def item(token: int, lp: float) -> dict:
            text = self.token_text(token)
            return {"token": text, "logprob": lp, "bytes": token_bytes(self.tokenizer, token, text)}

        content = [
            {**item(token, info[0]), "top_logprobs": [item(t, lp) for t, lp in info[1]]} for token, info in entries
        ]
        return {"content": content, "refusal": None}


async def _next_event(queue: asyncio.Queue, deadline: float) -> tuple:
    left = max(deadline + 5.0 - time.perf_counter(), 0.01)  # a safety net: the engine times requests out first
    try:
        if hasattr(asyncio, "timeout"):  # 3.11+: a timer handle, not a task per wait like wait_for
            async with asyncio.timeout(left):
                return await queue.get()
        return await asyncio.wait_for(queue.get(), timeout=left)
    except (asyncio.TimeoutError, TimeoutError):
        raise EngineError(408, "the request timed out") from None


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sse(obj) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n"


def _error_type(status: int) -> str:
    return "timeout_error" if status == 408 else "server_error"


def _error_response(status: int, message: str, type: str, param=None, code=None, headers=None) -> JSONResponse:
    return JSONResponse(S.error_body(message, type, param, code), status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    @app.exception_handler(S.RequestError)
    async def request_error(_, exc: S.RequestError):
        reason = {"context_length_exceeded": "too_long", "model_not_found": "unknown_model"}.get(exc.code, "invalid")
        metrics.rejected.labels(reason).inc()
        return _error_response(exc.status, exc.message, exc.type, exc.param, exc.code)

    @app.exception_handler(QueueFull)
    async def queue_full(_, exc: QueueFull):
        metrics.rejected.labels("queue_full").inc()
        return _error_response(
            429, f"{exc}; retry later", "rate_limit_error", code="queue_full", headers={"Retry-After": "1"}
        )

    @app.exception_handler(EngineUnavailable)
    async def unavailable(_, exc: EngineUnavailable):
        metrics.rejected.labels("unavailable").inc()
        return _error_response(503, str(exc), "service_unavailable", code="unavailable", headers={"Retry-After": "5"})

    @app.exception_handler(EngineError)
    async def engine_error(_, exc: EngineError):
        return _error_response(exc.status, str(exc), _error_type(exc.status), code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, exc: StarletteHTTPException):
        return _error_response(
            exc.status_code, str(exc.detail), "invalid_request_error", code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_, exc: RequestValidationError):
        metrics.rejected.labels("invalid").inc()
        err = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in err.get("loc", ())[1:])
        return _error_response(400, f"{loc}: {err.get('msg', 'invalid request')}", "invalid_request_error", loc or None)

    @app.exception_handler(Exception)
    async def internal(_, exc: Exception):
        log.exception("unhandled error")
        return _error_response(500, f"internal server error: {type(exc).__name__}", "server_error")


def create_app(
    load: Callable[[], Generator],
    tokenizer,
    cfg: ServeConfig,
    *,
    model_name: str,
    accepted_names: Iterable[str] = (),
    reasoning_marker: str | None = None,
    batch_invariant: bool = True,
    on_load_failure: Callable[[], None] | None = None,
) -> FastAPI:
    """The server for one model. `load` runs in the engine thread and returns the Generator.
    `accepted_names`: other names a request's "model" may use; `reasoning_marker`: what the model
    was trained to see after the chat prompt (serving/artifact.py); `batch_invariant=False`: run
    every sequence alone (the model's numerics mix the rows of a batch)."""
    svc = Service(load, tokenizer, cfg, model_name, accepted_names, reasoning_marker, batch_invariant, on_load_failure)
    api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    if cfg.api_key_env and not api_key:
        raise ValueError(f"--api-key-env {cfg.api_key_env}: that environment variable is not set or empty")

    @asynccontextmanager
    async def lifespan(_app):
        svc.engine.start()
        yield
        await asyncio.to_thread(svc.engine.stop, True, cfg.graceful_shutdown_s)  # drain, then exit

    app = FastAPI(title="slm-toolkit server", version="1", lifespan=lifespan)
    app.state.service = svc
    _install_error_handlers(app, svc.metrics)
    _add_routes(app, svc)
    document(app)
    app.add_middleware(
        Guard,
        api_key=api_key,
        max_body_bytes=cfg.max_body_bytes,
        body_timeout_s=cfg.body_timeout_s,
        on_reject=lambda reason: svc.metrics.rejected.labels(reason).inc(),
    )
    return app


_ERRORS = {code: {"model": S.ErrorResponse} for code in (400, 401, 404, 408, 413, 429, 500, 503)}


def _add_routes(app: FastAPI, svc: Service) -> None:
    async def health():
        ok = svc.engine.alive() and svc.engine.load_error is None
        return JSONResponse({"status": "ok" if ok else "dead"}, status_code=200 if ok else 503)

    probe = {200: {"model": S.Status}, 503: {"model": S.Status}}
    app.add_api_route("/health", health, methods=["GET"], responses=probe, operation_id="health")
    app.add_api_route("/health", health, methods=["HEAD"], responses=probe, operation_id="health_head")

    @app.get("/ready", responses={200: {"model": S.Status}, 503: {"model": S.Status}})
    async def ready():
        eng = svc.engine
        state = (
            "failed"
            if eng.load_error
            else "stopping"
            if eng.stopping
            else ("ready" if eng.ready.is_set() else "loading")
        )
        return JSONResponse({"status": state}, status_code=200 if state == "ready" else 503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus"}},
    )
    async def metrics():
        data, content_type = svc.metrics.render()
        return Response(data, media_type=content_type)

    @app.get("/v1/models", responses={200: {"model": S.ModelList}, 401: _ERRORS[401]})
    async def models():
        return JSONResponse({"object": "list", "data": [svc.model_card()]})

    @app.get(
        "/v1/models/{model_id:path}", responses={200: {"model": S.ModelCard}, 401: _ERRORS[401], 404: _ERRORS[404]}
    )
    async def model(model_id: str):
        svc.check_model(model_id)
        return JSONResponse(svc.model_card())

    @app.post("/v1/completions", responses={200: {"model": S.CompletionResponse}, **_ERRORS})
    async def completions(request: Request):
        body = S.parse_request(S.CompletionRequest, await request.body())
        svc.check_model(body.model)
        prompts = body.prompts()
        ids = [await svc.encode_prompt(p) for p in prompts]
        return await _generate(svc, request, body, ids, chat=False, texts=prompts)

    @app.post("/v1/chat/completions", responses={200: {"model": S.ChatCompletionResponse}, **_ERRORS})
    async def chat_completions(request: Request):
        body = S.parse_request(S.ChatCompletionRequest, await request.body())
        svc.check_model(body.model)
        return await _generate(svc, request, body, [await svc.encode_chat(body.messages)], chat=True)

    @app.post("/v1/score", responses={200: {"model": S.ScoreResponse}, **_ERRORS})
    async def score(request: Request):
        body = S.parse_request(S.ScoreRequest, await request.body())
        svc.check_model(body.model)
        return await _score(svc, body)


async def _generate(svc: Service, request: Request, body, prompts: list[list[int]], chat: bool, texts=None):
    echo = (not chat) and body.echo
    top = body.top_logprobs_count()
    generate = body.token_limit() != 0
    reqs = svc.requests_for(body, prompts) if generate else []
    echo_jobs = []
    if echo and top is not None:  # the prompt's own log-probabilities, token by token
        echo_jobs = [svc.job(lambda gen, ids=ids: prompt_logprobs(gen, ids, top), ids, len(ids)) for ids in prompts]
    svc.engine.submit_all(echo_jobs + reqs)
    stops, lazy = body.stop_list(), not body.stream
    asms = [TextAssembler(svc.decode, stops, body.min_tokens, lazy=lazy) for _ in range(len(prompts) * body.n)]
    rid = S.new_id("chatcmpl" if chat else "cmpl")
    prefix = [""] * len(prompts)
    if echo:
        prefix = [t if isinstance(t, str) else svc.decode(list(t)) for t in texts]
    if body.stream:
        stream = (
            _stream_chat(svc, reqs, asms, rid, body)
            if chat
            else _stream_completion(svc, reqs, asms, rid, body, prompts, prefix, echo_jobs)
        )
        return await _sse_response(stream)
    echoed = [await svc.wait_job(j) for j in echo_jobs]
    outs = await svc.collect(request, reqs, asms) if reqs else [["", "length", []] for _ in asms]
    use = S.usage(sum(map(len, prompts)), sum(len(a.ids) for a in asms))
    if chat:
        choices = [
            S.chat_choice(i, text, finish, svc.chat_logprobs(infos) if top is not None else None)
            for i, (text, finish, infos) in enumerate(outs)
        ]
        return JSONResponse(S.chat_body(rid, svc.model_name, choices, use))
    choices = []
    for i, (text, finish, infos) in enumerate(outs):
        p = i // body.n
        logprobs = None
        if top is not None:
            head = list(zip(prompts[p], echoed[p])) if echo else []
            logprobs = svc.completion_logprobs(head + infos, 0)
        choices.append(S.completion_choice(i, prefix[p] + text, finish, logprobs))
    return JSONResponse(S.completion_body(rid, svc.model_name, choices, use))


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _sse_response(stream: AsyncIterator[tuple[str, bool]]) -> Response:
    """The event stream's response, started when its first write is ready. When that write is
    the whole stream (a short answer, or one that was ready at once) it goes out as one plain
    response: two socket writes, like any small JSON answer, instead of headers, body and
    chunked terminator; otherwise a StreamingResponse sends the rest as it comes."""
    text, last = await stream.__anext__()
    if last:
        await stream.aclose()
        return Response(text, media_type="text/event-stream", headers=_SSE_HEADERS)

    async def rest():
        yield text
        async for chunk, _ in stream:
            yield chunk

    return StreamingResponse(rest(), media_type="text/event-stream", headers=_SSE_HEADERS)


async def _stream_completion(svc: Service, reqs, asms, rid: str, body, prompts, prefix, echo_jobs):
    """SSE for /v1/completions: one write per burst of ready tokens; the last burst carries the
    usage chunk and [DONE] too (a one-token answer is one write)."""
    inc, top, model = body.include_usage(), body.top_logprobs_count(), svc.model_name
    offsets = [0] * len(asms)
    out: list[str] = []
    try:
        if any(prefix):  # echo: the prompt first, as its own chunk per choice
            echoed = [await svc.wait_job(j) for j in echo_jobs]
            for i in range(len(asms)):
                p = i // body.n
                lp = svc.completion_logprobs(list(zip(prompts[p], echoed[p])), 0) if echoed else None
                offsets[i] = len(prefix[p])
                finish = None if reqs else "length"
                out.append(
                    _sse(S.completion_chunk(rid, model, S.completion_choice(i, prefix[p], finish, lp), None, inc))
                )
        done = 0
        if reqs:
            async for burst in svc.bursts(reqs, asms):
                for i, delta, finish, infos in burst:
                    lp = svc.completion_logprobs(infos, offsets[i]) if top is not None else None
                    offsets[i] += len(delta)
                    choice = S.completion_choice(i, delta, finish, lp)
                    out.append(_sse(S.completion_chunk(rid, model, choice, None, inc)))
                    done += finish is not None
                if done < len(asms):  # the last burst waits for the closing chunks below
                    yield "".join(out), False
                    out = []
    except EngineError as exc:
        out.append(_sse(S.error_body(str(exc), _error_type(exc.status), code=exc.status)))
    if inc:
        use = S.usage(sum(map(len, prompts)), sum(len(a.ids) for a in asms))
        out.append(_sse(S.completion_chunk(rid, model, None, use, True)))
    out.append(_sse("[DONE]"))
    yield "".join(out), True


async def _stream_chat(svc: Service, reqs, asms, rid: str, body):
    """SSE for /v1/chat/completions: the role chunks go out with the first tokens; one write per
    burst, the last one with the usage chunk and [DONE]."""
    inc, top, model = body.include_usage(), body.top_logprobs_count(), svc.model_name
    out = [
        _sse(S.chat_chunk(rid, model, i, {"role": "assistant", "content": ""}, None, None, None, inc))
        for i in range(len(asms))
    ]
    done = 0
    try:
        async for burst in svc.bursts(reqs, asms):
            for i, delta, finish, infos in burst:
                lp = svc.chat_logprobs(infos) if top is not None and infos else None
                if delta or lp:
                    out.append(_sse(S.chat_chunk(rid, model, i, {"content": delta}, None, lp, None, inc)))
                if finish:
                    out.append(_sse(S.chat_chunk(rid, model, i, {}, finish, None, None, inc)))
                    done += 1
            if done < len(asms):  # the last burst waits for the closing chunks below
                yield "".join(out), False
                out = []
    except EngineError as exc:
        out.append(_sse(S.error_body(str(exc), _error_type(exc.status), code=exc.status)))
    if inc:
        use = S.usage(len(reqs[0].prompt_ids), sum(len(a.ids) for a in asms))
        out.append(_sse(S.chat_chunk(rid, model, None, None, None, None, use, True)))
    out.append(_sse("[DONE]"))
    yield "".join(out), True


async def _score(svc: Service, body: S.ScoreRequest):
    prompt = await svc.encode_prompt(body.prompt)
    svc.check_chars(sum(map(len, body.candidates)), "candidates")
    cands = [encode(svc.tokenizer, c, add_special_tokens=False) for c in body.candidates]
    limit = svc.max_model_len()
    longest = len(prompt) + max(len(c) for c in cands)
    if longest > limit:
        raise S.RequestError(
            f"prompt + longest candidate is {longest} tokens, over the maximum context length of {limit}",
            param="candidates",
            code="context_length_exceeded",
        )
    if any(not c for c in cands):
        raise S.RequestError("candidates: a candidate tokenizes to no tokens", param="candidates")
    loop, now = asyncio.get_running_loop(), time.perf_counter()
    job = score_job(prompt, cands, loop, loop.create_future(), now, now + svc.cfg.request_timeout)
    svc.engine.submit(job)
    logprobs = await svc.wait_job(job)
    data = [
        {"index": i, "object": "score", "candidate": c, "logprob": lp, "num_tokens": len(ids)}
        for i, (c, lp, ids) in enumerate(zip(body.candidates, logprobs, cands))
    ]
    return JSONResponse(
        {
            "id": S.new_id("score"),
            "object": "list",
            "model": svc.model_name,
            "data": data,
            "usage": {"prompt_tokens": len(prompt), "total_tokens": len(prompt) + sum(map(len, cands))},
        }
    )
