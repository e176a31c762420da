"""The published benchmark formulas, checked against values computed by hand."""

from __future__ import annotations

import math

import pytest

from slm_toolkit.bench.config import BenchConfig
from slm_toolkit.bench.metrics import FORMULAS, RequestResult, meets_slo, saturation_warning, stats_ms, summarize


def _req(i, sent, ttft, e2el, out, prompt=10, gaps=None, ok=True, status=200, scheduled=None):
    return RequestResult(
        index=i,
        scheduled_s=sent if scheduled is None else scheduled,
        sent_s=sent,
        ok=ok,
        status=status,
        prompt_tokens=prompt if ok else 0,
        output_tokens=out if ok else 0,
        ttft_s=ttft,
        e2el_s=e2el,
        itl_s=gaps or [],
        usage_reported=ok,
    )


def test_tpot_formula():
    r = _req(0, 0.0, ttft=0.1, e2el=0.5, out=5)
    assert r.tpot_s == pytest.approx((0.5 - 0.1) / 4)  # 0.1 s
    assert _req(1, 0.0, ttft=0.1, e2el=0.1, out=1).tpot_s is None  # one token: no TPOT
    assert _req(2, 0.0, None, None, 0, ok=False, status=500).tpot_s is None


def test_stats_hand_computed():
    s = stats_ms([0.010, 0.020, 0.030, 0.040], "ttft")
    assert s["mean_ttft_ms"] == pytest.approx(25.0)
    assert s["median_ttft_ms"] == pytest.approx(25.0)
    # linear interpolation: position 0.9 * 3 = 2.7 -> 30 + 0.7 * 10
    assert s["p90_ttft_ms"] == pytest.approx(37.0)
    assert s["p99_ttft_ms"] == pytest.approx(39.7)
    assert s["std_ttft_ms"] == pytest.approx(math.sqrt(125.0))
    assert math.isnan(stats_ms([], "itl")["mean_itl_ms"])


def test_summarize_hand_computed():
    results = [
        # sent at 0: first token at 0.1, done at 0.5, 5 tokens (TPOT 100 ms), chunk gaps 0.1 s x4
        _req(0, 0.0, 0.1, 0.5, 5, prompt=10, gaps=[0.1, 0.1, 0.1, 0.1]),
        # sent at 0.5: first token at 0.7, done at 1.0 (E2E 0.5), 4 tokens (TPOT 100 ms)
        _req(1, 0.5, 0.2, 0.5, 4, prompt=20, gaps=[0.05, 0.15, 0.1]),
        _req(2, 0.2, None, None, 0, ok=False, status=429),
        _req(3, 0.3, None, None, 0, ok=False, status=500),
    ]
    s = summarize(results)
    assert s["completed"] == 2 and s["failed"] == 2 and s["rate_limited"] == 1
    assert s["duration"] == pytest.approx(1.0)  # first send 0.0 -> last completion 1.0
    assert s["request_throughput"] == pytest.approx(2.0)
    assert s["output_throughput"] == pytest.approx(9.0)
    assert s["total_token_throughput"] == pytest.approx(39.0)
    assert s["total_input_tokens"] == 30 and s["total_output_tokens"] == 9
    assert s["mean_ttft_ms"] == pytest.approx(150.0)
    assert s["median_tpot_ms"] == pytest.approx(100.0)
    assert s["mean_e2el_ms"] == pytest.approx(500.0)
    # ITL pooled over requests: 7 gaps, mean 0.7/7 = 100 ms, median 100 ms
    assert s["mean_itl_ms"] == pytest.approx(100.0)
    assert s["median_itl_ms"] == pytest.approx(100.0)
    assert s["request_goodput"] == pytest.approx(2.0)  # no SLO: every completed request counts


def test_goodput_counts_requests_meeting_every_slo():
    a = _req(0, 0.0, 0.1, 0.5, 5, gaps=[0.1] * 4)  # TTFT 100 ms, TPOT 100 ms
    b = _req(1, 0.0, 0.6, 1.0, 5, gaps=[0.1] * 4)  # TTFT 600 ms, TPOT 100 ms
    assert meets_slo(a, {"ttft": 500}) and not meets_slo(b, {"ttft": 500})
    assert not meets_slo(a, {"ttft": 500, "tpot": 50})
    assert not meets_slo(a, {"itl": 90}) and meets_slo(a, {"itl": 100})
    s = summarize([a, b], slo={"ttft": 500, "tpot": 150})
    assert s["duration"] == pytest.approx(1.0)
    assert s["request_goodput"] == pytest.approx(1.0)
    assert s["request_throughput"] == pytest.approx(2.0)


def test_send_lag_and_saturation_warning():
    r = [_req(0, 0.05, 0.1, 0.2, 2, scheduled=0.0), _req(1, 0.5, 0.1, 0.2, 2, scheduled=0.47)]
    s = summarize(r)
    assert s["mean_send_lag_ms"] == pytest.approx(40.0)
    assert s["max_send_lag_ms"] == pytest.approx(50.0)
    assert saturation_warning(s, open_loop=True) is not None
    assert saturation_warning(s, open_loop=False) is None


def test_formulas_published():
    for key in ("ttft", "tpot", "itl", "e2el", "request_goodput", "output_throughput"):
        assert key in FORMULAS
    assert "output tokens - 1" in FORMULAS["tpot"]


@pytest.mark.parametrize(
    "bad",
    [
        {"concurrency": []},
        {"concurrency": [0, 4]},
        {"num_requests": 0},
        {"warmup": -1},
        {"dataset": "wiki"},
        {"slo": {"latency": 5}},
        {"slo": {"ttft": 0}},
        {"rate": 0},
        {"backend": "vllm"},
        {"scheduler": "fifo"},
        {"unknown": 1},
    ],
)
def test_config_rejects(bad):
    with pytest.raises(ValueError):
        BenchConfig(**bad)


def test_config_accepts_recipe_form():
    cfg = BenchConfig(
        backend="onnxruntime",
        concurrency=[1, 4, 16],
        num_requests=64,
        dataset="prompts.jsonl",
        slo={"ttft": 500, "tpot": 50},
    )
    assert cfg.concurrency == [1, 4, 16] and cfg.slo == {"ttft": 500.0, "tpot": 50.0}


def test_arrival_times_gamma():
    from slm_toolkit.bench.load import arrival_times

    t = arrival_times(4001, rate=10.0, burstiness=1.0, seed=0)
    gaps = [b - a for a, b in zip(t, t[1:])]
    assert t[0] == 0.0 and abs(sum(gaps) / len(gaps) - 0.1) < 0.01  # mean gap 1/rate
    bursty = arrival_times(4001, rate=10.0, burstiness=0.25, seed=0)
    bgaps = [b - a for a, b in zip(bursty, bursty[1:])]
    var = lambda g: sum((x - sum(g) / len(g)) ** 2 for x in g) / len(g)  # noqa: E731
    assert var(bgaps) > 2 * var(gaps)  # shape < 1: burstier (CV^2 = 1/shape)


def _fake_send(delay: float, log: list):
    import asyncio
    import time

    state = {"in_flight": 0}

    async def send(client, ep, p, index, t0, scheduled_s):
        state["in_flight"] += 1
        log.append(state["in_flight"])
        sent = time.perf_counter() - t0
        await asyncio.sleep(delay)
        state["in_flight"] -= 1
        return RequestResult(
            index=index,
            scheduled_s=scheduled_s,
            sent_s=sent,
            ok=True,
            status=200,
            output_tokens=2,
            ttft_s=delay / 2,
            e2el_s=delay,
            itl_s=[delay / 2],
        )

    return send


def test_closed_loop_keeps_concurrency(monkeypatch):
    import asyncio

    from slm_toolkit.bench import load
    from slm_toolkit.bench.client import Endpoint, Prompt

    seen: list[int] = []
    monkeypatch.setattr(load, "send", _fake_send(0.01, seen))
    prompts = [Prompt("x", 2) for _ in range(12)]
    res, _ = asyncio.run(load.run_level(Endpoint("http://unused"), load.Level(3), prompts, prompts[:2], 0))
    assert [r.index for r in res] == list(range(12))  # warm-up excluded, every prompt once
    assert max(seen) == 3 and seen.count(3) >= 6
    s = summarize(res)
    assert s["completed"] == 12 and saturation_warning(s, open_loop=False) is None


def test_open_loop_follows_schedule_and_duration(monkeypatch):
    import asyncio

    from slm_toolkit.bench import load
    from slm_toolkit.bench.client import Endpoint, Prompt

    seen: list[int] = []
    monkeypatch.setattr(load, "send", _fake_send(0.05, seen))
    prompts = [Prompt("x", 2) for _ in range(100)]
    res, wall = asyncio.run(
        load.run_level(Endpoint("http://unused"), load.Level(None, rate=50.0), prompts, [], 0, duration_s=0.5)
    )
    assert 10 <= len(res) <= 45  # about rate * duration arrivals, the rest never sent
    assert max(seen) > 1  # open loop: arrivals do not wait for completions
    assert all(r.sent_s >= r.scheduled_s - 1e-6 for r in res)
    assert load.Level(None, rate=50.0).name == "r50" and load.Level(4, rate=2.5).name == "r2.5_c4"


def test_jsonl_dataset(tmp_path):
    from slm_toolkit.bench.datasets import load_prompts

    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a", "output_len": 5}\n\n{"question": "b"}\n')
    ps = load_prompts(str(f), 5, 0, 7, seed=0)
    assert len(ps) == 5 and {p.prompt for p in ps} == {"a", "b"}
    assert {(p.prompt, p.output_len, p.force_len) for p in ps} == {("a", 5, True), ("b", 7, False)}
    f.write_text('{"prompt": "a"}\n{"text": 3}\n')
    with pytest.raises(ValueError, match=":2: needs a non-empty"):
        load_prompts(str(f), 2, 0, 7, seed=0)


def test_random_prompts_exact_token_ids():
    from slm_toolkit.bench.datasets import random_prompts
    from slm_toolkit.demo.tokenizer import build_demo_tokenizer

    tok = build_demo_tokenizer()
    ps = random_prompts(4, 12, 9, seed=1, tokenizer=tok)
    assert all(len(p.prompt) == 12 and p.input_len == 12 and p.output_len == 9 for p in ps)
    assert not set(tok.all_special_ids) & {i for p in ps for i in p.prompt}
    assert ps == random_prompts(4, 12, 9, seed=1, tokenizer=tok)  # same seed, same prompts
    text = random_prompts(2, 5, 3, seed=1)  # no tokenizer: words
    assert all(len(p.prompt.split()) == 5 for p in text)
