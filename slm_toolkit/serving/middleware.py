"""ASGI middleware in front of the app: bearer API key, request body size limit and body
read timeout (a client that trickles its body is answered 408, not waited on forever).

Written as plain ASGI (not BaseHTTPMiddleware) so streaming responses pass through untouched.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Callable

from slm_toolkit.serving.schemas import error_body

_OPEN_PATHS = ("/health", "/ready", "/metrics")  # probes and scrapers need no key


async def _send_error(send, status: int, message: str, type: str, code: str, headers=()) -> None:
    body = json.dumps(error_body(message, type, code=code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(
        self,
        app,
        *,
        api_key: str | None,
        max_body_bytes: int,
        body_timeout_s: float = 30.0,
        on_reject: Callable[[str], None] = lambda reason: None,
    ):
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes
        self.body_timeout, self.on_reject = body_timeout_s, on_reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key and scope["path"] not in _OPEN_PATHS and not self._authorized(headers):
            self.on_reject("unauthorized")
            return await _send_error(
                send,
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                "authentication_error",
                "invalid_api_key",
                [(b"www-authenticate", b"Bearer")],
            )
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body:
            return await self._too_large(send)
        body, more = bytearray(), True
        deadline = time.monotonic() + self.body_timeout
        while more:  # read the whole body first (JSON requests are small), refusing past the limit
            try:
                message = await _receive_by(receive, deadline)
            except TimeoutError:
                self.on_reject("body_timeout")
                return await _send_error(
                    send,
                    408,
                    f"the request body did not arrive within {self.body_timeout:g} s",
                    "invalid_request_error",
                    "body_timeout",
                    [(b"connection", b"close")],
                )
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await self._too_large(send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    def _authorized(self, headers: dict) -> bool:
        given = headers.get(b"authorization", b"")
        expected = b"Bearer " + self.api_key.encode()
        return hmac.compare_digest(given, expected)  # constant time

    async def _too_large(self, send) -> None:
        self.on_reject("body_too_large")
        await _send_error(
            send, 413, f"request body is larger than {self.max_body} bytes", "invalid_request_error", "body_too_large"
        )


async def _receive_by(receive, deadline: float) -> dict:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    if hasattr(asyncio, "timeout"):  # 3.11+: a timer handle, no extra task
        async with asyncio.timeout(left):
            return await receive()
    try:
        return await asyncio.wait_for(receive(), left)
    except asyncio.TimeoutError:
        raise TimeoutError from None
