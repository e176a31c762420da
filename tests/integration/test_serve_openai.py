"""`slm serve` as an OpenAI client sees it: the official `openai` package against real uvicorn
servers, chat through the model's own template, long prompts, model ids, slow clients, OpenAPI."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_helpers import Server, chat, complete, sse, tiny_llama_folder

from slm_toolkit.core.artifacts import write_meta
from slm_toolkit.demo.tokenizer import train_bpe_tokenizer
from slm_toolkit.runtime.base import GenerationConfig
from slm_toolkit.runtime.loader import load_generator
from slm_toolkit.serving.artifact import model_ids, reasoning_marker

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXTS = [
    "Natalia sold clips to 48 of her friends in April, and then half as many in May.",
    "Weng earns $12 an hour for babysitting. Yesterday she did 50 minutes of babysitting.",
    "How many clips did Natalia sell altogether in April and May? #### 72 café ✓",
] * 30


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    """A tiny Llama with a byte-level BPE tokenizer and a ChatML chat template (no meta)."""
    tok = train_bpe_tokenizer(TEXTS, 400)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tiny_llama_folder(tmp_path_factory.mktemp("chat") / "chat-model", tok=tok)


@pytest.fixture(scope="module")
def srv(chat_model):
    server = Server(chat_model, max_batch_size=8, app_kw={"accepted_names": ["final"]})
    yield server
    server.close()


@pytest.fixture(scope="module")
def reference(chat_model):
    return load_generator(chat_model, threads=1)


@pytest.fixture(scope="module")
def client(srv):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def template_ids(tok, messages) -> list[int]:
    return list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


def test_openai_client_models_and_prompt_lists(client, srv):
    assert client.models.retrieve("tiny").id == "tiny"
    assert client.models.retrieve("final").id == "tiny"  # an accepted alias, answered with the served id
    assert [m.id for m in client.models.list().data] == ["tiny"]
    import openai

    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    prompts = ["Natalia sold", "Weng earns $12", "How many clips"]
    out = client.completions.create(model="tiny", prompt=prompts, max_tokens=5, temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2]
    singles = [complete(srv, p, max_tokens=5)["choices"][0]["text"] for p in prompts]
    assert [c.text for c in out.choices] == singles
    assert out.usage.prompt_tokens == sum(len(srv.tok(p)["input_ids"]) for p in prompts)
    ids = client.completions.create(model="tiny", prompt=[srv.tok(p)["input_ids"] for p in prompts[:2]], max_tokens=5)
    assert len(ids.choices) == 2


def test_openai_client_chat_content_parts_logprobs_n(client, srv, reference):
    parts = [{"type": "text", "text": "How many "}, {"type": "text", "text": "clips?"}]
    out = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": parts}],
        max_completion_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        n=2,
        frequency_penalty=0,
        presence_penalty=0,
    )
    ids = template_ids(srv.tok, [{"role": "user", "content": "How many clips?"}])
    assert out.usage.prompt_tokens == len(ids) and len(out.choices) == 2
    want = reference.generate([ids], GenerationConfig(max_new_tokens=6))[0]
    for choice in out.choices:  # greedy: both choices are the greedy text
        assert choice.message.content == srv.app.state.service.decode(want)
        entries = choice.logprobs.content
        assert len(entries) == len(want) and all(len(e.top_logprobs) == 3 for e in entries)
        assert entries[0].top_logprobs[0].logprob >= entries[0].top_logprobs[1].logprob
        assert entries[0].logprob == pytest.approx(entries[0].top_logprobs[0].logprob)  # greedy: the top token
    logits, _ = reference.prefill([ids])
    z = logits[0].astype(np.float64)
    lse = z.max() + np.log(np.exp(z - z.max()).sum())
    assert out.choices[0].logprobs.content[0].logprob == pytest.approx(z[want[0]] - lse, abs=1e-4)
    sampled = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=12, temperature=1.0, seed=3, n=2
    )
    texts = [c.message.content for c in sampled.choices]
    again = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=12, temperature=1.0, seed=3
    )
    assert again.choices[0].message.content == texts[0]  # choice 0 samples with the seed itself


def test_completion_logprobs_echo_and_penalties(srv, reference):
    prompt = "Natalia sold clips"
    pids = srv.tok(prompt)["input_ids"]
    body = complete(srv, prompt, max_tokens=3, logprobs=2, echo=True, ignore_eos=True)
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"].startswith(prompt) and len(lp["tokens"]) == len(pids) + 3
    assert lp["token_logprobs"][0] is None and all(x <= 0 for x in lp["token_logprobs"][1:])
    assert lp["text_offset"][0] == 0 and all(len(t) <= 2 for t in lp["top_logprobs"][1:])
    scored = srv.client.post("/v1/score", json={"prompt": "Natalia", "candidates": [" sold clips"]}).json()
    echo = complete(srv, "Natalia sold clips", max_tokens=0, echo=True, logprobs=0)["choices"][0]
    n_first = len(srv.tok("Natalia")["input_ids"])
    assert echo["text"] == "Natalia sold clips" and echo["finish_reason"] == "length"
    assert sum(echo["logprobs"]["token_logprobs"][n_first:]) == pytest.approx(scored["data"][0]["logprob"], abs=1e-3)
    pen = dict(frequency_penalty=-1.0, presence_penalty=-2.0)  # negative: repeat what was said
    penalized = complete(srv, prompt, max_tokens=12, ignore_eos=True, **pen)["choices"][0]["text"]
    want = reference.generate([pids], GenerationConfig(max_new_tokens=12, ignore_eos=True, **pen))[0]
    assert penalized == srv.app.state.service.decode(want)
    assert (
        len(set(want)) < 12 and penalized != complete(srv, prompt, max_tokens=12, ignore_eos=True)["choices"][0]["text"]
    )
    with srv.client.stream(
        "POST", "/v1/completions", json={"prompt": prompt, "max_tokens": 4, "stream": True, "logprobs": 1, "n": 2}
    ) as r:
        chunks = sse(list(r.iter_lines()))
    assert {c["choices"][0]["index"] for c in chunks} == {0, 1}
    assert all(c["choices"][0]["logprobs"]["tokens"] is not None for c in chunks)


def test_chat_is_exactly_the_models_template(srv, reference, chat_model, tmp_path):
    convo = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "How many clips?"},
        {"role": "assistant", "content": "72"},
        {"role": "user", "content": "And in May?"},
    ]
    body = chat(srv, convo, max_tokens=8, ignore_eos=True)
    ids = template_ids(srv.tok, convo)
    assert body["usage"]["prompt_tokens"] == len(ids)  # no reasoning marker: this model has none
    want = reference.generate([ids], GenerationConfig(max_new_tokens=8, ignore_eos=True))[0]
    text = body["choices"][0]["message"]["content"]
    assert text == srv.tok.decode(want, skip_special_tokens=False)  # no stray leading space added
    # a model trained with a marker (slm_meta.json says so, here through its parent): template + marker
    child = tmp_path / "child"
    child.mkdir()
    write_meta(chat_model.parent / "meta-parent", kind="hf", reasoning_marker="Natalia")
    write_meta(child, kind="hf", stage="quantize", parent=str(chat_model.parent / "meta-parent"))
    assert reasoning_marker(child) == "Natalia" and reasoning_marker(chat_model) is None
    marked = Server(chat_model, app_kw={"reasoning_marker": reasoning_marker(child)})
    try:
        one = [{"role": "user", "content": "How many clips?"}]
        got = chat(marked, one, max_tokens=2)["usage"]["prompt_tokens"]
        assert got == len(template_ids(srv.tok, one)) + len(srv.tok("Natalia", add_special_tokens=False)["input_ids"])
    finally:
        marked.close()


def test_builtin_lineage_means_the_demo_marker(tmp_path):
    root = tmp_path / "builtin"
    root.mkdir()
    write_meta(root, kind="hf", stage="builtin", builtin={"name": "arith-student"})
    (tmp_path / "run" / "03-distill").mkdir(parents=True)
    write_meta(tmp_path / "run" / "03-distill", kind="hf", stage="distill", parent=str(root))
    (tmp_path / "run" / "04-export").mkdir()
    write_meta(tmp_path / "run" / "04-export", kind="onnx", parent="03-distill")  # relative to the run folder
    assert reasoning_marker(tmp_path / "run" / "04-export") == "<think>"


def test_model_ids_accept_the_name_the_user_passed(tmp_path):
    stage = tmp_path / "run" / "05-quantize"
    stage.mkdir(parents=True)
    (tmp_path / "run" / "final").symlink_to(stage)
    ids = model_ids(tmp_path / "run" / "final")
    assert ids.served == "final"
    assert {"final", "05-quantize", str(tmp_path / "run" / "final"), str(stage)} <= ids.accepted
    assert model_ids(stage, "mine").served == "mine"


@pytest.fixture(scope="module")
def long_model(tmp_path_factory) -> Path:
    """The demo tokenizer (8 characters at most per token) and 131072 positions: up to ~1 MB of text fits."""
    return tiny_llama_folder(tmp_path_factory.mktemp("long") / "long-model", max_positions=131072)


def test_a_large_prompt_does_not_stall_other_requests(long_model):
    srv = Server(long_model, max_model_len=1000)
    try:
        # over max_model_len x 8 characters: refused before tokenizing, at once
        t0 = time.perf_counter()
        r = srv.client.post("/v1/completions", json={"prompt": "1+2*3=" * 2000, "max_tokens": 2})
        assert r.status_code == 400 and "characters" in r.json()["error"]["message"]
        assert r.json()["error"]["code"] == "context_length_exceeded" and time.perf_counter() - t0 < 1.0
    finally:
        srv.close()
    srv = Server(long_model, max_batch_size=4)  # the model's own limit: 131072 tokens, ~1 MB of text
    try:
        result = {}

        def big():
            t = time.perf_counter()
            result["r"] = srv.client.post("/v1/completions", json={"prompt": "12+7*3=" * 130_000, "max_tokens": 1})
            result["s"] = time.perf_counter() - t

        thread = threading.Thread(target=big)
        thread.start()
        waits = []
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            while thread.is_alive():
                t = time.perf_counter()
                assert c.get("/health").status_code == 200
                waits.append(time.perf_counter() - t)
                time.sleep(0.01)
        thread.join()
        # 910k characters are 910k tokens: over 131072, refused after tokenizing (~1 s, in a worker thread)
        assert result["r"].status_code == 400 and "maximum context length" in result["r"].json()["error"]["message"]
        assert result["s"] > 0.3 and len(waits) >= 5
        assert max(waits) < 0.25, max(waits)  # /health answered throughout
    finally:
        srv.close()


@pytest.mark.parametrize("scheduler", ["continuous", "naive"])
def test_streamed_timeout_reports_timeout_error(chat_model, scheduler):
    """--request-timeout holds while generating on both schedulers, streamed or not."""
    srv = Server(chat_model, delay=0.02, request_timeout=0.4, scheduler=scheduler)
    try:
        body = {"prompt": "Natalia", "max_tokens": 200, "ignore_eos": True, "stream": True}
        with srv.client.stream("POST", "/v1/completions", json=body) as r:
            lines = list(r.iter_lines())
        events = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
        assert events[-1]["error"]["type"] == "timeout_error" and events[-1]["error"]["code"] == 408
        t0 = time.perf_counter()
        plain = srv.client.post("/v1/completions", json={**body, "stream": False})
        assert plain.status_code == 408 and plain.json()["error"]["type"] == "timeout_error"
        assert time.perf_counter() - t0 < 2.0  # 200 tokens x 20 ms would take 4 s
    finally:
        srv.close()


def test_slow_clients_are_closed(chat_model):
    srv = Server(chat_model, header_timeout_s=0.5, body_timeout_s=0.5)
    try:
        host, port = srv.url.removeprefix("http://").split(":")
        socks = []
        for _ in range(30):  # slow-header clients: a request line, then nothing
            s = socket.create_connection((host, int(port)))
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        slow_body = socket.create_connection((host, int(port)))
        slow_body.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"prompt": '
        )
        time.sleep(1.6)
        for s in socks:
            s.settimeout(2)
            assert s.recv(1024) == b""  # closed by the server
            s.close()
        slow_body.settimeout(2)
        answer = slow_body.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive" in answer
        slow_body.close()
        assert complete(srv, "Natalia", max_tokens=2)["usage"]["completion_tokens"] == 2
    finally:
        srv.close()


def test_openapi_document_is_complete(srv):
    doc = srv.client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for path, model in [
        ("/v1/completions", "CompletionRequest"),
        ("/v1/chat/completions", "ChatCompletionRequest"),
        ("/v1/score", "ScoreRequest"),
    ]:
        op = doc["paths"][path]["post"]
        assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/" + model)
        assert model in schemas and "200" in op["responses"] and "400" in op["responses"]
        assert "422" not in op["responses"]
    assert set(doc["paths"]["/v1/completions"]["post"]["responses"]["200"]["content"]) == {
        "application/json",
        "text/event-stream",
    }
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert "/v1/models/{model_id}" in doc["paths"]
    for name in ("CompletionResponse", "ChatCompletionResponse", "ErrorResponse", "ModelCard", "ScoreResponse"):
        assert name in schemas
