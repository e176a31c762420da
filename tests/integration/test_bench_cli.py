"""`slm bench` end to end: a real `slm serve` of a tiny Llama, the closed-loop sweep, the open
loop, the GSM8K/JSONL/chat paths, usage errors and `slm bench compare`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_helpers import make_tiny
from typer.testing import CliRunner

from slm_toolkit.cli import app

runner = CliRunner()
GSM8K = Path(__file__).resolve().parents[1] / "fixtures" / "gsm8k"  # invented problems in GSM8K's format
VLLM_KEYS = [f"{s}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for s in ("mean", "median", "p99")] + [
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "request_goodput",
    "completed",
    "failed",
]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("bench") / "tiny-llama")


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    from slm_toolkit.bench.server import serve_artifact

    log = tmp_path_factory.mktemp("srv") / "server.log"
    with serve_artifact(artifact, log) as (url, proc):
        yield url, proc
    # SIGTERM: uvicorn drains, shuts the app down, then re-raises the signal (exit status -15)
    assert proc.returncode in (0, -15) and "Application shutdown complete" in log.read_text()


def _bench(*args: str):
    res = runner.invoke(app, ["bench", *args])
    return res.exit_code, res.output + (res.stderr if res.stderr_bytes is not None else "")


def test_artifact_sweep(artifact, tmp_path):
    out = tmp_path / "res"
    code, text = _bench(
        "--artifact",
        str(artifact),
        "--concurrency",
        "1,2",
        "--num-requests",
        "6",
        "--input-len",
        "8",
        "--output-len",
        "6",
        "--warmup",
        "1",
        "--out",
        str(out),
        "--label",
        "tiny",
        "--slo",
        "ttft=60000,tpot=60000",
    )
    assert code == 0, text
    doc = json.loads((out / "results.json").read_text())
    assert doc["label"] == "tiny" and doc["formulas"]["tpot"].startswith("TPOT = (E2E - TTFT)")
    assert [lv["name"] for lv in doc["levels"]] == ["c1", "c2"]
    for lv in doc["levels"]:
        assert all(k in lv for k in VLLM_KEYS)
        assert lv["completed"] == 6 and lv["failed"] == 0 and lv["usage_missing"] == 0
        assert len(lv["requests"]) == 6  # the warm-up request is not among them
        assert lv["total_output_tokens"] == 36 and lv["total_input_tokens"] == 48  # forced lengths, server usage
        assert lv["request_goodput"] == pytest.approx(lv["request_throughput"])  # generous SLOs: all good
        for r in lv["requests"]:
            assert r["finish_reason"] == "length" and r["ttft_s"] <= r["e2el_s"]
            assert r["tpot_s"] == pytest.approx((r["e2el_s"] - r["ttft_s"]) / 5)
    assert "| c1 |" in (out / "results.md").read_text()
    assert (out / "latency_throughput.png").stat().st_size > 1000 and (out / "ttft_cdf.png").is_file()
    assert "Shutting down" in (out / "server.log").read_text()  # the server was stopped


def test_open_loop_gsm8k_and_compare(server, tmp_path, monkeypatch):
    url, _ = server
    monkeypatch.setenv("SLM_GSM8K", str(GSM8K))
    a, b = tmp_path / "a", tmp_path / "b"
    code, text = _bench(
        "--url",
        url,
        "--rate",
        "20",
        "--burstiness",
        "0.5",
        "--num-requests",
        "5",
        "--dataset",
        "gsm8k",
        "--output-len",
        "4",
        "--warmup",
        "0",
        "--out",
        str(a),
        "--label",
        "open",
    )
    assert code == 0, text
    lv = json.loads((a / "results.json").read_text())["levels"][0]
    assert lv["name"] == "r20" and lv["completed"] == 5 and lv["rate"] == 20
    assert len({r["prompt_tokens"] for r in lv["requests"]}) > 1  # real questions: varied lengths
    sched = sorted(r["scheduled_s"] for r in lv["requests"])
    assert sched[0] == 0.0 and sched[-1] > 0.0  # Gamma arrivals spread over time
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "1+2=", "output_len": 3}\n{"question": "2*3=", "output_len": 3}\n')
    code, text = _bench(
        "--url",
        url,
        "--concurrency",
        "2",
        "--num-requests",
        "4",
        "--dataset",
        str(jsonl),
        "--api",
        "chat",
        "--warmup",
        "0",
        "--out",
        str(b),
        "--label",
        "chat",
    )
    assert code == 0, text
    lv = json.loads((b / "results.json").read_text())["levels"][0]
    assert lv["completed"] == 4 and lv["total_output_tokens"] == 12
    cmp = tmp_path / "cmp"
    code, text = _bench("compare", str(a / "results.json"), str(b / "results.json"), "--out", str(cmp))
    assert code == 0, text
    md = (cmp / "compare.md").read_text()
    assert "| open | r20 |" in md and "| chat | c2 |" in md and (cmp / "compare.png").is_file()


def test_failed_requests_are_counted(server, tmp_path):
    url, _ = server
    out = tmp_path / "bad"  # prompt + output over the model's 512 positions: every request is a 400
    code, text = _bench(
        "--url",
        url,
        "--concurrency",
        "2",
        "--num-requests",
        "3",
        "--input-len",
        "8",
        "--output-len",
        "600",
        "--warmup",
        "0",
        "--out",
        str(out),
    )
    assert code == 0, text
    lv = json.loads((out / "results.json").read_text())["levels"][0]
    assert lv["completed"] == 0 and lv["failed"] == 3 and lv["rate_limited"] == 0
    assert lv["requests"][0]["status"] == 400 and "context length" in lv["requests"][0]["error"]
    assert any("requests failed" in w for w in lv["warnings"])


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "exactly one of --url"),
        (["--url", "http://x", "--artifact", "."], "exactly one of --url"),
        (["--url", "http://x", "--concurrency", "1,0"], "--concurrency"),
        (["--url", "http://x", "--concurrency", "a"], "--concurrency"),
        (["--url", "http://x", "--slo", "ttft"], "--slo"),
        (["--url", "http://x", "--slo", "speed=3"], "unknown SLO"),
        (["--url", "http://x", "--num-requests", "3", "--duration", "2"], "not both"),
        (["--url", "http://x", "--dataset", "wiki"], "--dataset"),
        (["--artifact", "/no/such/folder"], "folder not found"),
        (["--url", "http://x", "--api", "grpc"], "--api"),
    ],
)
def test_usage_errors(args, message):
    code, text = _bench(*args)
    assert code == 2 and message in text, text


def test_gsm8k_dataset_reads_its_folder_from_the_environment(monkeypatch, tmp_path):
    from slm_toolkit.bench.datasets import load_prompts

    monkeypatch.delenv("SLM_GSM8K", raising=False)
    with pytest.raises(FileNotFoundError, match="set SLM_GSM8K to a folder"):
        load_prompts("gsm8k", 3, 8, 4, 0)
    monkeypatch.setenv("SLM_GSM8K", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="GSM8K questions not found"):
        load_prompts("gsm8k", 3, 8, 4, 0)
    monkeypatch.setenv("SLM_GSM8K", str(GSM8K))
    prompts = load_prompts("gsm8k", 40, 8, 4, 0)
    assert len(prompts) == 40 and len({p.prompt for p in prompts}) == 30  # cycled over the 30 questions


def test_compare_rejects_other_json(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"a": 1}')
    code, text = _bench("compare", str(bad))
    assert code == 2 and "not a `slm bench` results.json" in text
