"""`slm serve` end to end: real uvicorn servers on free loopback ports, a tiny Llama, the demo tokenizer."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import Server, chat, complete, metric, sse, tiny_llama_folder

from slm_toolkit.data.segments import prompt_ids
from slm_toolkit.demo.tokenizer import build_demo_tokenizer
from slm_toolkit.runtime.base import GenerationConfig
from slm_toolkit.runtime.loader import load_generator

MAX_LEN = 160
PROMPTS = [f"{a}+{b}*{c}=" for a, b, c in zip(range(1, 33), range(7, 39), range(3, 35))]
PROMPTS = [p * (1 + i % 3) for i, p in enumerate(PROMPTS)]  # ragged lengths


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return tiny_llama_folder(tmp_path_factory.mktemp("served") / "tiny-llama")


@pytest.fixture(scope="module")
def main(artifact):
    srv = Server(
        artifact,
        app_kw={"reasoning_marker": "<think>", "accepted_names": ["final", "/runs/x/final"]},
        max_batch_size=8,
        max_queue=64,
        max_model_len=MAX_LEN,
        max_body_bytes=65536,
    )
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def small(artifact, monkeypatch_module):
    monkeypatch_module.setenv("SLM_TEST_KEY", "s3cret")
    srv = Server(
        artifact,
        headers={"Authorization": "Bearer s3cret"},
        delay=0.01,
        max_batch_size=1,
        max_queue=2,
        request_timeout=1.5,
        api_key_env="SLM_TEST_KEY",
    )
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def reference(artifact):
    return load_generator(artifact)


def test_probes_and_models(main):
    assert main.client.get("/health").json() == {"status": "ok"}
    assert main.client.get("/ready").status_code == 200
    card = main.client.get("/v1/models").json()["data"][0]
    assert card["id"] == "tiny" and card["max_model_len"] == MAX_LEN


def test_completion_matches_runtime_generate(main, reference):
    body = complete(main, "12+7=", max_tokens=9)
    ids = main.tok("12+7=")["input_ids"]
    want = reference.generate([ids], GenerationConfig(max_new_tokens=9))[0]
    choice = body["choices"][0]
    assert body["object"] == "text_completion"
    assert choice["text"] == main.app.state.service.decode(want) and choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 9, "total_tokens": len(ids) + 9}


def test_chat_fallback_format_without_a_template(main, reference):
    """No chat template: <bos> turn [marker] reply <eos> turn [marker]; one user message is the
    demo world's training prompt (data.segments.prompt_ids)."""
    body = chat(main, [{"role": "user", "content": "3*4"}], model="tiny", max_tokens=6)
    ids = prompt_ids(main.tok, "3*4")
    want = reference.generate([ids], GenerationConfig(max_new_tokens=6))[0]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": main.app.state.service.decode(want)}
    assert body["usage"]["prompt_tokens"] == len(ids)
    two = chat(main, [{"role": "system", "content": "1+1"}, {"role": "user", "content": "3*4"}], max_tokens=2)
    assert two["usage"]["prompt_tokens"] == len(prompt_ids(main.tok, "1+1\n\n3*4"))
    turns = [
        {"role": "user", "content": "3*4"},
        {"role": "assistant", "content": "1+2=12"},
        {"role": "user", "content": [{"type": "text", "text": "5"}, {"type": "text", "text": "+1"}]},
    ]
    multi = chat(main, turns, max_tokens=3)
    tok, think = main.tok, main.tok.convert_tokens_to_ids("<think>")
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    expect = [tok.bos_token_id] + enc("3*4") + [think] + enc("1+2=12") + [tok.eos_token_id] + enc("5+1") + [think]
    assert multi["usage"]["prompt_tokens"] == len(expect)
    got = reference.generate([expect], GenerationConfig(max_new_tokens=3))[0]
    assert multi["choices"][0]["message"]["content"] == main.app.state.service.decode(got)


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_streaming_with_usage(main, route):
    base = {"max_tokens": 7, "temperature": 0}
    base |= {"prompt": "5-2="} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "5-2"}]}
    whole = main.client.post(route, json=base).json()
    with main.client.stream(
        "POST", route, json=base | {"stream": True, "stream_options": {"include_usage": True}}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        chunks = sse(list(r.iter_lines()))
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"] == whole["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])
    if route == "/v1/completions":
        text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
        assert text == whole["choices"][0]["text"]
    else:
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
        assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_stop_strings_min_tokens_ignore_eos(main):
    full = complete(main, "9+9=", max_tokens=20, ignore_eos=True)["choices"][0]["text"]
    stop = full[4:6]
    cut = complete(main, "9+9=", max_tokens=20, stop=[stop, "@@"])
    assert cut["choices"][0] == {"index": 0, "text": full[: full.find(stop)], "logprobs": None, "finish_reason": "stop"}
    with main.client.stream(
        "POST",
        "/v1/completions",
        json={"prompt": "9+9=", "max_tokens": 20, "temperature": 0, "stop": stop, "stream": True},
    ) as r:
        chunks = sse(list(r.iter_lines()))
    assert "".join(c["choices"][0]["text"] for c in chunks) == full[: full.find(stop)]
    fixed = complete(main, "9+9=", max_tokens=20, min_tokens=20, ignore_eos=True)
    assert fixed["usage"]["completion_tokens"] == 20 and fixed["choices"][0]["finish_reason"] == "length"


def test_seeded_sampling_is_reproducible(main):
    a = complete(main, "1+1=", max_tokens=12, temperature=0.9, top_p=0.9, seed=7)["choices"][0]["text"]
    b = complete(main, "1+1=", max_tokens=12, temperature=0.9, top_p=0.9, seed=7)["choices"][0]["text"]
    assert a == b


def test_score_matches_runtime(main, reference):
    cands = ["3", "33", "3</think>3"]
    r = main.client.post("/v1/score", json={"prompt": "1+2=", "candidates": cands})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    ids = main.tok("1+2=")["input_ids"]
    want = reference.score(ids, [main.tok(c, add_special_tokens=False)["input_ids"] for c in cands])
    assert [d["candidate"] for d in data] == cands
    assert [d["logprob"] for d in data] == pytest.approx(want, abs=1e-4)
    assert all(d["logprob"] < 0 for d in data)


async def _fire(url: str, bodies: list[dict], headers=None) -> list[httpx.Response]:
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=60, limits=httpx.Limits(max_connections=100)
    ) as c:
        return await asyncio.gather(*(c.post("/v1/completions", json=b) for b in bodies))


def test_32_concurrent_identical_to_sequential(main):
    bodies = [
        {"prompt": p, "max_tokens": 6 + i % 9, "temperature": 0, "ignore_eos": i % 2 == 0}
        for i, p in enumerate(PROMPTS)
    ]
    sequential = [main.client.post("/v1/completions", json=b).json()["choices"][0]["text"] for b in bodies]
    before = main.metrics()
    responses = asyncio.run(_fire(main.url, bodies))
    after = main.metrics()
    assert [r.status_code for r in responses] == [200] * 32
    assert [r.json()["choices"][0]["text"] for r in responses] == sequential
    steps = metric(after, "batch_size_count") - metric(before, "batch_size_count")
    seqs = metric(after, "batch_size_sum") - metric(before, "batch_size_sum")
    assert seqs / steps > 2  # they really ran batched


def test_naive_scheduler_gives_the_same_text_greedy_and_seeded(artifact, main, reference):
    """One sampler on every path: greedy and seeded sampling (with penalties) give the same text on
    the naive scheduler, the continuous one and runtime generate."""
    naive = Server(artifact, scheduler="naive", max_model_len=MAX_LEN)
    try:
        for p in PROMPTS[:4]:
            assert (
                complete(naive, p, max_tokens=8)["choices"][0]["text"]
                == complete(main, p, max_tokens=8)["choices"][0]["text"]
            )
        kw = dict(temperature=1.0, top_p=0.9, seed=11, presence_penalty=0.5, frequency_penalty=0.2)
        ids = main.tok(PROMPTS[1])["input_ids"]
        cfg = GenerationConfig(max_new_tokens=16, min_new_tokens=16, ignore_eos=True, **kw)
        want = main.app.state.service.decode(reference.generate([ids], cfg)[0])
        body = {"max_tokens": 16, "min_tokens": 16, "ignore_eos": True, **kw}
        for srv in (naive, main):
            assert complete(srv, PROMPTS[1], **body)["choices"][0]["text"] == want
        greedy = complete(main, PROMPTS[1], max_tokens=16, min_tokens=16, ignore_eos=True)["choices"][0]["text"]
        assert want != greedy  # it really sampled
        # the naive scheduler streams token by token, like the continuous one
        stream = {"prompt": PROMPTS[0], "temperature": 0.0, "max_tokens": 8, "min_tokens": 8, "ignore_eos": True}
        with naive.client.stream("POST", "/v1/completions", json=stream | {"stream": True}) as r:
            texts = [c["choices"][0]["text"] for c in sse(list(r.iter_lines())) if c["choices"][0]["text"]]
        assert "".join(texts) == complete(naive, **stream)["choices"][0]["text"] and len(texts) > 1
    finally:
        naive.close()


@pytest.mark.slow
def test_onnx_artifact_serves_batched_like_sequential(artifact, tmp_path):
    from slm_toolkit.models.onnx_export import export_onnx

    export_onnx(artifact, tmp_path / "onnx", optimize="none")
    srv = Server(tmp_path / "onnx", backend="onnxruntime", max_batch_size=8, max_model_len=MAX_LEN)
    try:
        bodies = [
            {"prompt": p, "max_tokens": 6 + i % 9, "temperature": 0, "ignore_eos": True} for i, p in enumerate(PROMPTS)
        ]
        sequential = [complete(srv, **b)["choices"][0]["text"] for b in bodies]
        responses = asyncio.run(_fire(srv.url, bodies))
        assert [r.json()["choices"][0]["text"] for r in responses] == sequential
        assert complete(srv, "1+2=", max_tokens=5)["usage"]["completion_tokens"] == 5
    finally:
        srv.close()


MALFORMED = [
    ("/v1/completions", b'{"prompt": ', 400),
    ("/v1/completions", b"[1, 2]", 400),
    ("/v1/completions", b"prompt=hi", 400),
    ("/v1/completions", {"max_tokens": 4}, 400),
    ("/v1/completions", {"prompt": ""}, 400),
    ("/v1/completions", {"prompt": 12}, 400),
    ("/v1/completions", {"prompt": "a", "max_tokens": "10"}, 400),
    ("/v1/completions", {"prompt": "a", "max_tokens": 0}, 400),
    ("/v1/completions", {"prompt": "a", "max_tokens": -3}, 400),
    ("/v1/completions", {"prompt": "a", "temperature": -1}, 400),
    ("/v1/completions", {"prompt": "a", "temperature": 3.5}, 400),
    ("/v1/completions", {"prompt": "a", "top_p": 0}, 400),
    ("/v1/completions", {"prompt": "a", "top_p": 1.5}, 400),
    ("/v1/completions", {"prompt": "a", "n": 0}, 400),
    ("/v1/completions", {"prompt": ["a", "b"], "n": 40}, 400),
    ("/v1/completions", {"prompt": "a", "logprobs": 21}, 400),
    ("/v1/completions", {"prompt": "a", "max_tokens": 0}, 400),
    ("/v1/completions", {"prompt": "a", "frequency_penalty": 2.5}, 400),
    ("/v1/completions", {"prompt": "a", "best_of": 2}, 400),
    ("/v1/completions", {"prompt": "a", "best_of_everything": True}, 400),
    ("/v1/completions", {"prompt": "a", "stream": "yes"}, 400),
    ("/v1/completions", {"prompt": "a", "stream_options": {"include_usage": True}}, 400),
    ("/v1/completions", {"prompt": "a", "stop": [1, 2]}, 400),
    ("/v1/completions", {"prompt": "a", "stop": ""}, 400),
    ("/v1/completions", {"prompt": "a", "max_tokens": 4, "min_tokens": 9}, 400),
    ("/v1/completions", {"prompt": "a", "seed": -1}, 400),
    ("/v1/completions", {"prompt": "a", "ignore_eos": "true"}, 400),
    ("/v1/completions", {"prompt": "a", "max_tokens": MAX_LEN}, 400),
    ("/v1/completions", {"prompt": [1, 99999]}, 400),
    ("/v1/completions", {"prompt": "a", "model": "gpt-4"}, 404),
    ("/v1/chat/completions", {"messages": []}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "url": "x"}]}]}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": []}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, 400),
    ("/v1/score", {"prompt": "a", "candidates": []}, 400),
    ("/v1/score", {"prompt": "a", "candidates": "b"}, 400),
    ("/v1/completions", b'{"prompt": "' + b"x" * 70000 + b'"}', 413),
    ("/v1/nothing-here", {"prompt": "a"}, 404),
]


def test_malformed_requests_are_4xx_and_the_server_survives(main):
    assert len(MALFORMED) >= 20
    before = main.metrics()
    for route, body, status in MALFORMED:
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = main.client.post(route, **kw)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert err["message"] and err["type"] and set(err) == {"message", "type", "param", "code"}, err
    wrong = main.client.get("/v1/completions")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST" and wrong.json()["error"]["message"]
    assert main.client.head("/health").status_code == 200
    after = main.metrics()
    assert (
        metric(after, "requests_rejected_total", reason="too_long")
        - metric(before, "requests_rejected_total", reason="too_long")
        == 1
    )
    assert (
        metric(after, "requests_rejected_total", reason="body_too_large")
        - metric(before, "requests_rejected_total", reason="body_too_large")
        == 1
    )
    assert main.client.get("/health").status_code == 200
    assert complete(main, "1+1=", max_tokens=3)["usage"]["completion_tokens"] == 3


def test_error_in_one_request_fails_only_that_request(main):
    bodies = [{"prompt": p, "max_tokens": 5, "temperature": 0} for p in PROMPTS[:5]]
    bodies.insert(2, {"prompt": [main.tok.bos_token_id, main.poison, 7], "max_tokens": 5})
    responses = asyncio.run(_fire(main.url, bodies))
    assert [r.status_code for r in responses] == [200, 200, 500, 200, 200, 200]
    assert responses[2].json()["error"]["type"] == "server_error"
    assert main.client.get("/health").status_code == 200


def test_metrics_count_what_happened(main):
    before = main.metrics()
    bodies = [complete(main, p, max_tokens=4 + i) for i, p in enumerate(PROMPTS[:3])]
    main.client.post("/v1/completions", json={"prompt": "a", "top_p": 9})
    after = main.metrics()
    delta = lambda name, **lb: metric(after, name, **lb) - metric(before, name, **lb)  # noqa: E731
    assert delta("generation_tokens_total") == sum(b["usage"]["completion_tokens"] for b in bodies) == 15
    assert delta("prompt_tokens_total") == sum(b["usage"]["prompt_tokens"] for b in bodies)
    for hist in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"):
        assert delta(f"{hist}_count") == 3, hist
    assert delta("inter_token_latency_seconds_count") == 15 - 3
    assert delta("requests_finished_total", reason="length") == 3
    assert delta("requests_rejected_total", reason="invalid") == 1
    assert metric(after, "num_requests_running") == 0 and metric(after, "num_requests_waiting") == 0


def test_api_key(small):
    with httpx.Client(base_url=small.url, timeout=10) as anon:
        assert anon.post("/v1/completions", json={"prompt": "1", "max_tokens": 2}).status_code == 401
        bad = anon.post("/v1/completions", json={"prompt": "1"}, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]["type"] == "authentication_error"
        assert anon.get("/v1/models").status_code == 401
        assert anon.get("/health").status_code == 200 and anon.get("/ready").status_code == 200
    assert complete(small, "1+", max_tokens=2)["usage"]["completion_tokens"] == 2


def test_flood_gets_429_with_retry_after(small):
    before = small.metrics()
    bodies = [{"prompt": "2*3=", "max_tokens": 5, "temperature": 0} for _ in range(16)]
    responses = asyncio.run(_fire(small.url, bodies, headers=small.client.headers))
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 429} and codes.count(200) >= 3
    texts = {r.json()["choices"][0]["text"] for r in responses if r.status_code == 200}
    assert len(texts) == 1
    assert all(r.headers["retry-after"] == "1" for r in responses if r.status_code == 429)
    after = small.metrics()
    rejected = metric(after, "requests_rejected_total", reason="queue_full") - metric(
        before, "requests_rejected_total", reason="queue_full"
    )
    assert rejected == codes.count(429)


def test_disconnect_frees_the_slot(small):
    before = small.metrics()
    body = {"prompt": "1+1=", "max_tokens": 120, "ignore_eos": True, "stream": True}
    with small.client.stream("POST", "/v1/completions", json=body) as r:  # batch size 1: holds the only slot
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    # the stream is closed: the next request can only run once the engine dropped the first one
    assert complete(small, "1+1=", max_tokens=3)["choices"][0]["finish_reason"] == "length"
    after = small.metrics()
    assert (
        metric(after, "requests_finished_total", reason="cancelled")
        - metric(before, "requests_finished_total", reason="cancelled")
        == 1
    )
    assert metric(after, "generation_tokens_total") - metric(before, "generation_tokens_total") < 60
    with pytest.raises(httpx.ReadTimeout):  # a non-streaming client that gives up
        small.client.post("/v1/completions", json=body | {"stream": False}, timeout=0.2)
    assert complete(small, "1+1=", max_tokens=3)["choices"][0]["finish_reason"] == "length"
    assert (
        metric(small.metrics(), "requests_finished_total", reason="cancelled")
        - metric(before, "requests_finished_total", reason="cancelled")
        == 2
    )


def test_many_clients_vanishing_mid_stream_leave_nothing_behind(main):
    async def client(c: httpx.AsyncClient, i: int):
        body = {"prompt": PROMPTS[i % 32], "max_tokens": 24, "ignore_eos": True, "stream": True}
        async with c.stream("POST", "/v1/completions", json=body) as r:
            seen = 0
            async for line in r.aiter_lines():
                seen += line.startswith("data: ")
                if i % 2 and seen > i % 7:  # odd clients hang up after a few tokens
                    return "gone"
        return "done"

    async def main_():
        async with httpx.AsyncClient(base_url=main.url, timeout=60, limits=httpx.Limits(max_connections=64)) as c:
            return await asyncio.gather(*(client(c, i) for i in range(24)))

    before = main.metrics()
    assert sorted(asyncio.run(main_())) == ["done"] * 12 + ["gone"] * 12
    deadline = time.time() + 10
    while metric(main.metrics(), "num_requests_running") or metric(main.metrics(), "num_requests_waiting"):
        assert time.time() < deadline, "sequences of vanished clients are still running"
        time.sleep(0.05)
    after = main.metrics()
    cancelled = metric(after, "requests_finished_total", reason="cancelled") - metric(
        before, "requests_finished_total", reason="cancelled"
    )
    assert 0 < cancelled <= 12
    assert complete(main, "1+1=", max_tokens=3)["usage"]["completion_tokens"] == 3


def test_request_timeout_cancels(small):
    r = small.client.post("/v1/completions", json={"prompt": "1", "max_tokens": 200, "ignore_eos": True})
    assert r.status_code == 408 and "timed out" in r.json()["error"]["message"]
    assert metric(small.metrics(), "requests_finished_total", reason="timeout") == 1
    assert complete(small, "1+", max_tokens=2)["usage"]["completion_tokens"] == 2


def test_cli_errors_are_clear(artifact, tmp_path):
    from typer.testing import CliRunner

    from slm_toolkit.cli import app

    runner = CliRunner()
    missing = runner.invoke(app, ["serve", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "artifact folder not found" in missing.output
    bad = runner.invoke(app, ["serve", str(artifact), "--scheduler", "fast"])
    assert bad.exit_code == 2 and "scheduler" in bad.output
    build_demo_tokenizer().save_pretrained(tmp_path / "no-weights")  # a tokenizer, but no model
    broken = runner.invoke(app, ["serve", str(tmp_path / "no-weights"), "--port", "0"])
    assert broken.exit_code == 1 and "could not load" in broken.output and "not a model artifact" in broken.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_and_drains_on_sigterm(artifact, tmp_path):
    port, log = _free_port(), tmp_path / "server.log"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "slm_toolkit.cli", "serve", str(artifact), "--port", str(port), "--max-batch-size", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            deadline = time.time() + 60
            while True:
                assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
                try:
                    if c.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            body = {
                "prompt": "1+2=",
                "max_tokens": 230,
                "ignore_eos": True,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            with c.stream("POST", "/v1/completions", json=body) as r:
                lines = r.iter_lines()
                first = next(lines)
                proc.send_signal(signal.SIGTERM)  # in flight: must finish before the server exits
                chunks = sse([first, *lines])
        assert chunks[-2]["choices"][0]["finish_reason"] == "length"
        assert chunks[-1]["usage"]["completion_tokens"] == 230
        assert proc.wait(timeout=30) == 0  # a clean drain exits 0
        assert "Finished server process" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
