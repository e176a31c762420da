"""OpenAI-compatible request and response shapes (the subset this server implements).

Requests are strict: a wrong type ("5" for an integer), an out-of-range value or an unknown
field is a 400 with a message naming the field, not a silent coercion. vLLM's extensions
`min_tokens` and `ignore_eos` are accepted, as benchmarks need them. Only what cannot be
honoured is refused (e.g. `tools`, `response_format`, image content parts), naming the field.

The response models below document the routes in /openapi.json; the routes build plain dicts
of the same shape (cheaper than validating every response), and the property test checks real
responses against these schemas.
"""

from __future__ import annotations

import random
import time
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

_STRICT = ConfigDict(extra="forbid", strict=True)
MAX_CHOICES = 64  # prompts x n in one request
_PENALTY = Field(default=0.0, ge=-2.0, le=2.0)


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
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    frequency_penalty: float = _PENALTY
    presence_penalty: float = _PENALTY
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

    def token_limit(self) -> int | None:
        return self.max_tokens

    def top_logprobs_count(self) -> int | None:
        """None: no logprobs; k: the sampled token's log-probability and the k most likely."""
        return None


Prompt = Union[str, list[str], list[int], list[list[int]]]


class CompletionRequest(SamplingFields):
    prompt: Prompt
    max_tokens: int | None = Field(default=16, ge=0)  # OpenAI's default; 0 only with echo
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False

    @model_validator(mode="after")
    def _prompts(self):
        prompts = self.prompts()
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prompt: must not be empty")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens: must be >= 1 (0 only with echo)")
        if len(prompts) * self.n > MAX_CHOICES:
            raise ValueError(f"n: prompts x n must be <= {MAX_CHOICES}")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompts of the request: one for a string or a list of ids, else each of the list."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)

    def top_logprobs_count(self) -> int | None:
        return self.logprobs


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        """The message's text: a list of text parts is joined without separator (as OpenAI does)."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _chat(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs set to true")
        limit = self.token_limit()
        if limit is not None and self.min_tokens > limit:
            raise ValueError("min_tokens: must be <= max_completion_tokens")
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def top_logprobs_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


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


# ---- responses (documentation; the routes write dicts of these shapes) -------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ScoreItem(BaseModel):
    index: int
    object: Literal["score"]
    candidate: str
    logprob: float
    num_tokens: int


class ScoreUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"]
    model: str
    data: list[ScoreItem]
    usage: ScoreUsage


class Status(BaseModel):
    status: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | int | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


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
        errors = exc.errors(include_url=False)
        err = _most_telling(errors)
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


_UNION_TAGS = {"str", "list[str]", "list[int]", "list[list[int]]", "list[TextPart]"}


def _most_telling(errors: list[dict]) -> dict:
    """The first error, with a union's branch names dropped from its location; for a field
    whose every union branch failed, the error of the branch that got furthest."""
    for err in errors:
        err["loc"] = tuple(p for p in err["loc"] if p not in _UNION_TAGS and not str(p).startswith("function-"))
    first = errors[0]
    same = [e for e in errors if e["loc"][: len(first["loc"])] == first["loc"]]
    if len(same) > 1 and all(e["loc"] == first["loc"] for e in same) and first["loc"]:
        field = str(first["loc"][-1])
        if field in _UNION_MESSAGES:  # no branch got inside the value: say what the field takes
            return {**first, "msg": _UNION_MESSAGES[field], "type": "invalid_type"}
    return max(same, key=lambda e: len(e["loc"])) if len(same) > 1 else first


_UNION_MESSAGES = {
    "prompt": "must be a string, a list of strings, a list of token ids or a list of token-id lists",
    "content": "must be a string or a list of text parts ({type: text, text})",
    "stop": "must be a string or a list of strings",
}


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


def completion_body(rid: str, model: str, choices: list[dict], use: dict | None) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": use,
    }


def completion_choice(index: int, text: str, finish: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def completion_chunk(rid: str, model: str, choice: dict | None, use: dict | None = None, with_usage=False) -> dict:
    body = {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [] if choice is None else [choice],
    }
    if with_usage:
        body["usage"] = use
    return body


def chat_body(rid: str, model: str, choices: list[dict], use: dict) -> dict:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": use,
    }


def chat_choice(index: int, text: str, finish: str | None, logprobs: dict | None = None) -> dict:
    return {
        "index": index,
        "message": {"role": "assistant", "content": text},
        "logprobs": logprobs,
        "finish_reason": finish,
    }


def chat_chunk(
    rid: str,
    model: str,
    index: int | None,
    delta: dict | None,
    finish: str | None,
    logprobs: dict | None = None,
    use: dict | None = None,
    with_usage: bool = False,
) -> dict:
    choices = [] if delta is None else [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]
    body = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if with_usage:
        body["usage"] = use
    return body
