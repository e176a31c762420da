"""A complete /openapi.json: request bodies, responses, errors.

The POST routes read their body themselves (strict validation, one-line OpenAI-shaped errors,
no second parse), so FastAPI cannot see their request models: this adds them, from the same
pydantic classes that validate the requests. Responses come from the routes' `responses=`; the
streamed variant (`stream: true`) is declared as `text/event-stream`. FastAPI's automatic 422
entries are dropped: this server answers invalid requests with 400.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from slm_toolkit.serving import schemas as S

REQUEST_BODIES = {
    "/v1/completions": S.CompletionRequest,
    "/v1/chat/completions": S.ChatCompletionRequest,
    "/v1/score": S.ScoreRequest,
}
STREAMED = ("/v1/completions", "/v1/chat/completions")
_REF = "#/components/schemas/{model}"


def build(app: FastAPI) -> dict:
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    _, defs = models_json_schema([(m, "validation") for m in REQUEST_BODIES.values()], ref_template=_REF)
    for name, schema in defs.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    for path, model in REQUEST_BODIES.items():
        op = doc["paths"][path]["post"]
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}},
        }
        if path in STREAMED:
            op["responses"]["200"]["content"]["text/event-stream"] = {
                "schema": {"type": "string", "description": "server-sent events ending with `data: [DONE]`"}
            }
    for item in doc["paths"].values():
        for op in item.values():
            op.get("responses", {}).pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return doc


def document(app: FastAPI) -> None:
    """Make app.openapi() return the complete document (built once, on first request)."""
    cache: dict = {}

    def openapi() -> dict:
        if "doc" not in cache:
            cache["doc"] = build(app)
        return cache["doc"]

    app.openapi = openapi
