"""One streamed request against an OpenAI-compatible server, timed the way metrics.py defines.

httpx's async client with a connection pool at least as large as the concurrency (a smaller
pool would queue requests in the client and inflate TTFT). Token counts come from the server's
`usage` (stream_options.include_usage), never from re-tokenizing the text; a server that sends
no usage gets its streamed content chunks counted instead, and the result says so
(`usage_reported: false`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from slm_toolkit.bench.metrics import RequestResult


@dataclass
class Prompt:
    """A prompt (text, or token ids for /v1/completions) and the output length asked for."""

    prompt: str | list[int]
    output_len: int
    force_len: bool = True  # ask for exactly output_len tokens (min_tokens + ignore_eos)
    input_len: int | None = None  # known prompt tokens (random dataset), else from `usage`


@dataclass
class Endpoint:
    """Where and how to send: api "completions" or "chat"; `extensions` = send vLLM's
    min_tokens/ignore_eos (servers that reject unknown fields need False); `count_tokens`
    re-tokenizes the streamed text when a server sends no `usage` (else chunks are counted)."""

    base_url: str
    api: str = "completions"
    model: str | None = None
    extensions: bool = True
    api_key: str | None = None
    timeout_s: float = 600.0
    count_tokens: Callable[[str], int] | None = None


def make_client(concurrency: int, timeout_s: float = 600.0) -> httpx.AsyncClient:
    """A pool with room for every request in flight (plus a few), so none waits in the client."""
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout_s, connect=30.0))


def build_payload(ep: Endpoint, p: Prompt) -> tuple[str, dict]:
    """URL path and JSON body for one request (greedy, streamed, usage requested)."""
    body: dict = {
        "max_tokens": p.output_len,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ep.model:
        body["model"] = ep.model
    if ep.extensions and p.force_len:
        body["min_tokens"] = p.output_len
        body["ignore_eos"] = True
    if ep.api == "chat":
        if not isinstance(p.prompt, str):
            raise ValueError("the chat API takes text prompts, not token ids")
        body["messages"] = [{"role": "user", "content": p.prompt}]
        return "/v1/chat/completions", body
    body["prompt"] = p.prompt
    return "/v1/completions", body


def _chunk_text(obj: dict) -> str:
    choice = obj["choices"][0]
    if "delta" in choice:
        return (choice["delta"] or {}).get("content") or ""
    return choice.get("text") or ""


async def send(
    client: httpx.AsyncClient, ep: Endpoint, p: Prompt, index: int, t0: float, scheduled_s: float
) -> RequestResult:
    """Send one streamed request; times are perf_counter seconds relative to t0."""
    path, body = build_payload(ep, p)
    headers = {"Authorization": f"Bearer {ep.api_key}"} if ep.api_key else {}
    res = RequestResult(index=index, scheduled_s=scheduled_s)
    sent = time.perf_counter()
    res.sent_s = sent - t0
    last = None
    chunks: list[str] = []
    try:
        async with client.stream("POST", ep.base_url.rstrip("/") + path, json=body, headers=headers) as resp:
            res.status = resp.status_code
            if resp.status_code != 200:
                res.error = (await resp.aread()).decode(errors="replace")[:500]
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    continue  # read to the end of the body (as the openai client does): the connection is reused
                obj = json.loads(data)
                if "error" in obj:
                    res.error = json.dumps(obj["error"])[:500]
                    return res
                now = time.perf_counter()
                if obj.get("choices") and (text := _chunk_text(obj)):
                    chunks.append(text)
                    if last is None:
                        res.ttft_s = now - sent
                    else:
                        res.itl_s.append(now - last)
                    last = now
                if obj.get("choices") and obj["choices"][0].get("finish_reason"):
                    res.finish_reason = obj["choices"][0]["finish_reason"]
                if obj.get("usage"):
                    res.prompt_tokens = int(obj["usage"].get("prompt_tokens") or 0)
                    res.output_tokens = int(obj["usage"].get("completion_tokens") or 0)
                    res.usage_reported = True
        res.e2el_s = time.perf_counter() - sent
    except (httpx.HTTPError, json.JSONDecodeError, KeyError, IndexError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"[:500]
        return res
    if not res.usage_reported:  # e.g. `transformers serve`: re-tokenize (or count chunks), say so
        text = "".join(chunks)
        res.output_tokens = ep.count_tokens(text) if ep.count_tokens else len(chunks)
        res.prompt_tokens = p.input_len or 0
    res.ok = res.ttft_s is not None
    if not res.ok:
        res.error = "the stream ended without any token"
    return res
