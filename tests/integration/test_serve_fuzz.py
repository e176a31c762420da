"""Property test of the served API against its own /openapi.json (slow suite).

Request bodies are drawn by hypothesis from the request schemas the server documents (a small
JSON-schema-to-strategy translation below, enough for pydantic's schemas), plus arbitrary JSON
values (wrong types included) put in each field; every answer must be a documented status below
500, and its body must match the schema documented for that status.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from serve_helpers import Server, tiny_llama_folder

hypothesis = pytest.importorskip("hypothesis")
jsonschema = pytest.importorskip("jsonschema")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.slow
ROUTES = ["/v1/completions", "/v1/chat/completions", "/v1/score"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = Server(
        tiny_llama_folder(tmp_path_factory.mktemp("fuzz") / "tiny"), max_model_len=64, request_timeout=20, max_queue=256
    )
    yield server
    server.close()


def _local_refs(node):
    """#/components/schemas/X -> #/$defs/X, so a schema can carry the components with it."""
    if isinstance(node, dict):
        return {
            k: (v.replace("#/components/schemas/", "#/$defs/") if k == "$ref" else _local_refs(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_local_refs(v) for v in node]
    return node


@pytest.fixture(scope="module")
def doc(srv):
    return srv.client.get("/openapi.json").json()


def _schema(doc, ref_or_schema: dict) -> dict:
    return {**_local_refs(ref_or_schema), "$defs": _local_refs(doc["components"]["schemas"])}


def _bounded(schema: dict) -> dict:
    """Small generated values: short strings and lists, max_tokens and n low (a bounded run)."""
    schema = json.loads(json.dumps(schema))
    for d in schema["$defs"].values():
        props = d.get("properties", {})
        for key, cap in (("max_tokens", 8), ("max_completion_tokens", 8), ("n", 3), ("min_tokens", 4)):
            if key in props:
                props[key] = {"anyOf": [{"type": "integer", "minimum": 0, "maximum": cap}, {"type": "null"}]}
    return schema


def from_schema(node: dict, defs: dict):
    """A hypothesis strategy for the JSON values a (pydantic-made) JSON schema accepts."""
    if "$ref" in node:
        return st.deferred(lambda: from_schema(defs[node["$ref"].rsplit("/", 1)[1]], defs))
    if "anyOf" in node:
        return st.one_of([from_schema(n, defs) for n in node["anyOf"]])
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "object":
        props = {k: from_schema(v, defs) for k, v in node.get("properties", {}).items()}
        required = set(node.get("required", []))
        return st.fixed_dictionaries(
            {k: v for k, v in props.items() if k in required},
            optional={k: v for k, v in props.items() if k not in required},
        )
    if kind == "array":
        items = from_schema(node.get("items", {}), defs) if node.get("items") else st.none()
        low = node.get("minItems", 0)
        return st.lists(items, min_size=low, max_size=max(low, min(node.get("maxItems", 3), 3)))
    if kind == "string":
        return st.text(min_size=node.get("minLength", 0), max_size=12)
    if kind == "integer":
        low = node.get("minimum", node.get("exclusiveMinimum", -(2**70)) + 1 if "exclusiveMinimum" in node else None)
        high = node.get("maximum", node.get("exclusiveMaximum", 2**70) - 1 if "exclusiveMaximum" in node else None)
        return st.integers(low, high)
    if kind == "number":
        return st.floats(
            node.get("minimum", node.get("exclusiveMinimum")),
            node.get("maximum", node.get("exclusiveMaximum")),
            exclude_min="exclusiveMinimum" in node,
            exclude_max="exclusiveMaximum" in node,
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return st.none() | st.booleans() | st.integers() | st.text(max_size=8)


def _check(doc, route: str, response) -> None:
    op = doc["paths"][route]["post"]
    status = str(response.status_code)
    assert response.status_code < 500, response.text
    assert status in op["responses"], f"{route}: undocumented status {status}: {response.text}"
    content = op["responses"][status]["content"]
    ctype = response.headers["content-type"].split(";")[0]
    assert ctype in content, (route, ctype)
    if ctype == "application/json":
        jsonschema.validate(response.json(), _schema(doc, content[ctype]["schema"]))
    else:  # streamed: every event is JSON (a chunk or an error) and the stream ends with [DONE]
        events = [x[6:] for x in response.text.split("\n") if x.startswith("data: ")]
        assert events and events[-1] == "[DONE]"
        for e in events[:-1]:
            json.loads(e)


@pytest.mark.parametrize("route", ROUTES)
def test_no_5xx_and_no_schema_violation(srv, doc, route):
    body_schema = _bounded(
        _schema(doc, doc["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"])
    )
    valid = from_schema(body_schema, body_schema["$defs"])
    anything = st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=6,
    )
    fields = list(body_schema["$defs"][body_schema["$ref"].rsplit("/", 1)[1]]["properties"])
    mutated = st.tuples(valid, st.sampled_from(fields), anything).map(lambda t: {**t[0], t[1]: t[2]})

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(body=st.one_of(valid, mutated))
    def run(body):
        if body.get("stream") and "stream_options" not in body:
            body.setdefault("max_tokens", 4)
        _check(doc, route, srv.client.post(route, json=body))

    run()


def test_get_routes_answer_as_documented(srv, doc):
    """Model ids of any text: 200 or 404 as documented; the probes and listings match their schemas."""

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(model_id=st.text(min_size=1, max_size=20).filter(lambda t: t.strip("/.")))
    def run(model_id):
        r = srv.client.get("/v1/models/" + quote(model_id, safe=""))
        op = doc["paths"]["/v1/models/{model_id}"]["get"]
        assert str(r.status_code) in op["responses"], r.text
        jsonschema.validate(
            r.json(), _schema(doc, op["responses"][str(r.status_code)]["content"]["application/json"]["schema"])
        )

    run()
    for path in ("/health", "/ready", "/v1/models"):
        r = srv.client.get(path)
        content = doc["paths"][path]["get"]["responses"][str(r.status_code)]["content"]["application/json"]
        jsonschema.validate(r.json(), _schema(doc, content["schema"]))
