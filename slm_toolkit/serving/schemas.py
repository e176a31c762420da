"""OpenAI-compatible request and response shapes (the subset this server implements).

Requests are strict: a wrong type ("5" for an integer), an out-of-range value or an
unknown field is a 400 with a message naming the field, not a silent coercion.
vLLM's extensions `min_tokens` and `ignore_eos` are accepted, as benchmarks need them.
"""

from __future__ import annotations

import random
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

_STRICT = ConfigDict(extra="forbid", strict=True)


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = _STRICT
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False
    n: Literal[1] = 1
    user: str | None = None

    @model_validator(mode="after")
    def _check(self):
        stops = self.stop_list()
        if len(stops) > 16:
            raise ValueError("stop: at most 16 stop strings")
        if any(not s for s in stops):
            raise ValueError("stop: stop strings must be non-empty")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError("min_tokens: must be <= max_tokens")
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingFields):
    prompt: str | list[int]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions

    @model_validator(mode="after")
    def _non_empty(self):
        if len(self.prompt) == 0:
            raise ValueError("prompt: must not be empty")
        return self


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "user", "assistant", "developer"]
    content: str
    name: str | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)


class ScoreRequest(BaseModel):
    model_config = _STRICT
    model: str | None = None
    prompt: str
    candidates: list[str] = Field(min_length=1, max_length=256)

    @model_validator(mode="after")
    def _non_empty(self):
        if any(c == "" for c in self.candidates):
            raise ValueError("candidates: candidates must be non-empty strings")
        return self


class RequestError(Exception):
    """A client error answered in OpenAI's error shape."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        *,
        param: str | None = None,
        type: str = "invalid_request_error",
        code: str | None = None,
    ):
        super().__init__(message)
        self.message, self.status, self.param, self.type, self.code = message, status, param, type, code


def error_body(message: str, type: str, param: str | None = None, code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def parse_request(model: type[BaseModel], body: bytes) -> BaseModel:
    """Validate a raw JSON body; a ValidationError becomes a 400 naming the first bad field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "json_invalid":
            raise RequestError(f"request body is not valid JSON: {msg}", code="json_invalid") from None
        if err["type"] == "model_type" and not loc:
            raise RequestError("request body must be a JSON object", code="invalid_type") from None
        if err["type"] == "extra_forbidden":
            msg = "unknown or unsupported field"
        text = f"{loc}: {msg}" if loc and not msg.startswith(f"{loc}:") else msg
        param = loc or (msg.split(":", 1)[0] if ":" in msg else None)
        raise RequestError(text, param=param, code=err["type"]) from None


_IDS = random.Random()  # seeded from os.urandom once


def new_id(prefix: str) -> str:
    """A unique response id. Not uuid4: its os.urandom call releases the GIL right after the
    engine thread took a request, and getting the GIL back costs the event loop up to one
    switch interval (5 ms) per request. Ids identify responses; they are not secrets."""
    return f"{prefix}-{_IDS.getrandbits(128):032x}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(rid: str, model: str, text: str, finish: str | None, use: dict | None) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        "usage": use,
    }


def completion_chunk(
    rid: str, model: str, text: str | None, finish: str | None, use: dict | None = None, with_usage: bool = False
) -> dict:
    body = {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [] if text is None else [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if with_usage:
        body["usage"] = use
    return body


def chat_body(rid: str, model: str, text: str, finish: str | None, use: dict) -> dict:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
        ],
        "usage": use,
    }


def chat_chunk(
    rid: str, model: str, delta: dict | None, finish: str | None, use: dict | None = None, with_usage: bool = False
) -> dict:
    body = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if with_usage:
        body["usage"] = use
    return body
