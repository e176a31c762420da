"""The FastAPI app: OpenAI-compatible routes in front of the engine thread.

The event loop only parses, tokenizes, detokenizes and streams; model code runs in the
engine's thread. Every error is answered in OpenAI's {"error": {message, type, param, code}} shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from slm_toolkit.runtime.base import Generator
from slm_toolkit.serving import schemas as S
from slm_toolkit.serving.config import ServeConfig
from slm_toolkit.serving.engine import (
    Engine,
    EngineError,
    EngineUnavailable,
    GenRequest,
    QueueFull,
    SamplingParams,
    ScoreJob,
)
from slm_toolkit.serving.metrics import ServerMetrics
from slm_toolkit.serving.middleware import Guard
from slm_toolkit.serving.text import TextAssembler

log = logging.getLogger("slm_toolkit.serving")


class Service:
    """What the routes share: tokenizer, engine, metrics, limits."""

    def __init__(
        self,
        load: Callable[[], Generator],
        tokenizer,
        cfg: ServeConfig,
        model_name: str,
        on_load_failure: Callable[[], None] | None = None,
    ):
        self.tokenizer, self.cfg, self.model_name = tokenizer, cfg, model_name
        self.metrics = ServerMetrics()
        first = next(
            (i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None), 0
        )
        self.engine = Engine(
            load,
            self.metrics,
            max_batch_size=cfg.max_batch_size,
            max_queue=cfg.max_queue,
            token_budget=cfg.token_budget,
            scheduler=cfg.scheduler,
            warmup_ids=[first] * 4,
            on_load_failure=on_load_failure,
        )
        self._hidden = {
            i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None
        }

    # ---- text <-> ids ---------------------------------------------------------------
    def max_model_len(self) -> int:
        model_len = self.engine.generator.max_length if self.engine.generator else None
        limits = [x for x in (self.cfg.max_model_len, model_len) if x]
        return min(limits) if limits else 2048

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i not in self._hidden], skip_special_tokens=False)

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        vocab = len(self.tokenizer)
        bad = next((i for i in prompt if not 0 <= i < vocab), None)
        if bad is not None:
            raise S.RequestError(f"prompt: token id {bad} is outside the vocabulary [0, {vocab})", param="prompt")
        return list(prompt)

    def encode_chat(self, messages: list[S.ChatMessage]) -> list[int]:
        """One user message: the exact generation prompt the toolkit trains and evaluates with
        (segments.prompt_ids: the chat template or the plain one, then `<think>`). Longer
        conversations: the tokenizer's chat template; without one, system/user turns joined."""
        from slm_toolkit.data.segments import prompt_ids

        tok = self.tokenizer
        if len(messages) == 1 and messages[0].role == "user":
            return list(prompt_ids(tok, messages[0].content))
        if getattr(tok, "chat_template", None):
            convo = [{"role": m.role, "content": m.content} for m in messages]
            return list(tok.apply_chat_template(convo, add_generation_prompt=True, tokenize=True))
        if any(m.role == "assistant" for m in messages) or messages[-1].role != "user":
            raise S.RequestError(
                "messages: this model has no chat template; send system/user messages ending with a user message",
                param="messages",
            )
        return list(prompt_ids(tok, "\n\n".join(m.content for m in messages)))

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise S.RequestError(
                f"model '{name}' does not exist; this server serves '{self.model_name}'",
                404,
                param="model",
                code="model_not_found",
            )

    # ---- generation ------------------------------------------------------------------
    def submit(self, body: S.SamplingFields, ids: list[int]) -> GenRequest:
        limit = self.max_model_len()
        max_tokens = body.max_tokens if body.max_tokens is not None else limit - len(ids)
        if len(ids) + max(max_tokens, 1) > limit:
            raise S.RequestError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{len(ids) + max_tokens} tokens ({len(ids)} in the prompt, {max_tokens} for the completion). "
                "Please reduce the prompt or max_tokens.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            min_tokens=min(body.min_tokens, max_tokens),
            ignore_eos=body.ignore_eos,
        )
        now = time.perf_counter()
        req = GenRequest(ids, params, asyncio.get_running_loop(), asyncio.Queue(), now, now + self.cfg.request_timeout)
        self.engine.submit(req)
        return req

    async def events(self, req: GenRequest, asm: TextAssembler) -> AsyncIterator[tuple[str, str | None]]:
        """(text delta, finish reason or None) until the request ends; cancels it if abandoned.
        Tokens that are already waiting are sent as one delta: a stream that fell behind (or the
        naive scheduler, which hands over all its tokens at once) costs one SSE write, not one
        per token; a stream that keeps up still gets every token as it is made."""
        ended, pending = False, ""
        try:
            while True:
                if pending and req.events.empty():
                    yield pending, None
                    pending = ""
                event = req.events.get_nowait() if not req.events.empty() else await _next_event(req)
                if event[0] == "token":
                    pending += asm.add(event[1])
                    if asm.stopped:
                        self.engine.cancel(req, "stop")
                        ended = True
                        yield pending, "stop"
                        return
                elif event[0] == "finish":
                    ended = True
                    yield pending + asm.flush(), event[1]
                    return
                else:
                    ended = True
                    if pending:
                        yield pending, None
                    raise EngineError(event[1], event[2])
        finally:
            if not ended:  # client gone, timed out or cancelled: drop the sequence at the next step
                self.engine.cancel(req, "cancelled")

    async def collect(self, request: Request, req: GenRequest, asm: TextAssembler) -> tuple[str, str]:
        """Whole output of a non-streaming request; a client disconnect cancels it."""

        async def consume():
            parts = []
            async for delta, finish in self.events(req, asm):
                parts.append(delta)
                if finish:
                    return "".join(parts), finish

        task = asyncio.create_task(consume())
        watcher = asyncio.create_task(_wait_disconnect(request))
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        watcher.cancel()
        if not task.done():
            task.cancel()
            self.engine.cancel(req, "cancelled")
            raise EngineError(499, "client disconnected")
        return task.result()


async def _next_event(req: GenRequest) -> tuple:
    left = req.deadline + 5.0 - time.perf_counter()  # a safety net: the engine times requests out first
    try:
        return await asyncio.wait_for(req.events.get(), timeout=max(left, 0.01))
    except asyncio.TimeoutError:
        raise EngineError(408, "the request timed out") from None


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sse(obj) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n"


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
        kind = "timeout_error" if exc.status == 408 else "server_error"
        return _error_response(exc.status, str(exc), kind, code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, exc: StarletteHTTPException):
        return _error_response(exc.status_code, str(exc.detail), "invalid_request_error", code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_, exc: RequestValidationError):
        metrics.rejected.labels("invalid").inc()
        return _error_response(400, str(exc.errors()[:1]), "invalid_request_error")

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
    on_load_failure: Callable[[], None] | None = None,
) -> FastAPI:
    """The server for one model. `load` runs in the engine thread and returns the Generator."""
    svc = Service(load, tokenizer, cfg, model_name, on_load_failure)
    api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    if cfg.api_key_env and not api_key:
        raise ValueError(f"--api-key-env {cfg.api_key_env}: that environment variable is not set or empty")

    @asynccontextmanager
    async def lifespan(_app):
        svc.engine.start()
        yield
        await asyncio.to_thread(svc.engine.stop, True, cfg.graceful_shutdown_s)  # drain, then exit

    app = FastAPI(title="slm-toolkit server", lifespan=lifespan)
    app.state.service = svc
    _install_error_handlers(app, svc.metrics)
    _add_routes(app, svc)
    app.add_middleware(
        Guard,
        api_key=api_key,
        max_body_bytes=cfg.max_body_bytes,
        on_reject=lambda reason: svc.metrics.rejected.labels(reason).inc(),
    )
    return app


def _add_routes(app: FastAPI, svc: Service) -> None:
    @app.get("/health")
    async def health():
        ok = svc.engine.alive() and svc.engine.load_error is None
        return JSONResponse({"status": "ok" if ok else "dead"}, status_code=200 if ok else 503)

    @app.get("/ready")
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

    @app.get("/metrics")
    async def metrics():
        data, content_type = svc.metrics.render()
        return Response(data, media_type=content_type)

    @app.get("/v1/models")
    async def models():
        card = {
            "id": svc.model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "slm-toolkit",
            "max_model_len": svc.max_model_len(),
        }
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = S.parse_request(S.CompletionRequest, await request.body())
        svc.check_model(body.model)
        return await _generate(svc, request, body, svc.encode_prompt(body.prompt), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = S.parse_request(S.ChatCompletionRequest, await request.body())
        svc.check_model(body.model)
        return await _generate(svc, request, body, svc.encode_chat(body.messages), chat=True)

    @app.post("/v1/score")
    async def score(request: Request):
        body = S.parse_request(S.ScoreRequest, await request.body())
        svc.check_model(body.model)
        return await _score(svc, body)


async def _generate(svc: Service, request: Request, body: S.SamplingFields, ids: list[int], chat: bool):
    req = svc.submit(body, ids)
    # non-streaming without stop strings: decode once at the end, not after every token
    asm = TextAssembler(svc.decode, body.stop_list(), body.min_tokens, lazy=not body.stream)
    rid = S.new_id("chatcmpl" if chat else "cmpl")
    if body.stream:
        stream = _stream_chat(svc, req, asm, rid, body) if chat else _stream_completion(svc, req, asm, rid, body)
        return StreamingResponse(
            stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
    text, finish = await svc.collect(request, req, asm)
    use = S.usage(len(ids), len(asm.ids))
    if chat:
        return S.chat_body(rid, svc.model_name, text, finish, use)
    return S.completion_body(rid, svc.model_name, text, finish, use)


async def _stream_completion(svc: Service, req: GenRequest, asm: TextAssembler, rid: str, body):
    inc = body.include_usage()
    try:
        async for delta, finish in svc.events(req, asm):
            yield _sse(S.completion_chunk(rid, svc.model_name, delta, finish, None, inc))
    except EngineError as exc:
        yield _sse(S.error_body(str(exc), "server_error", code=exc.status))
    if inc:
        yield _sse(
            S.completion_chunk(rid, svc.model_name, None, None, S.usage(len(req.prompt_ids), len(asm.ids)), True)
        )
    yield _sse("[DONE]")


async def _stream_chat(svc: Service, req: GenRequest, asm: TextAssembler, rid: str, body):
    inc = body.include_usage()
    yield _sse(S.chat_chunk(rid, svc.model_name, {"role": "assistant", "content": ""}, None, None, inc))
    try:
        async for delta, finish in svc.events(req, asm):
            if delta:
                yield _sse(S.chat_chunk(rid, svc.model_name, {"content": delta}, None, None, inc))
            if finish:
                yield _sse(S.chat_chunk(rid, svc.model_name, {}, finish, None, inc))
    except EngineError as exc:
        yield _sse(S.error_body(str(exc), "server_error", code=exc.status))
    if inc:
        yield _sse(S.chat_chunk(rid, svc.model_name, None, None, S.usage(len(req.prompt_ids), len(asm.ids)), True))
    yield _sse("[DONE]")


async def _score(svc: Service, body: S.ScoreRequest):
    prompt = svc.encode_prompt(body.prompt)
    cands = [list(svc.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in body.candidates]
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
    loop = asyncio.get_running_loop()
    now = time.perf_counter()
    job = ScoreJob(prompt, cands, loop, loop.create_future(), now, now + svc.cfg.request_timeout)
    svc.engine.submit(job)
    try:
        logprobs = await asyncio.wait_for(asyncio.shield(job.future), svc.cfg.request_timeout + 5.0)
    except asyncio.TimeoutError:
        svc.engine.cancel(job)
        raise EngineError(408, "the request timed out") from None
    data = [
        {"index": i, "object": "score", "candidate": c, "logprob": lp, "num_tokens": len(ids)}
        for i, (c, lp, ids) in enumerate(zip(body.candidates, logprobs, cands))
    ]
    return {
        "id": S.new_id("score"),
        "object": "list",
        "model": svc.model_name,
        "data": data,
        "usage": {"prompt_tokens": len(prompt), "total_tokens": len(prompt) + sum(map(len, cands))},
    }
