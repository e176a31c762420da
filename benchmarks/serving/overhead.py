"""HTTP overhead per request, measured in pairs: our server at concurrency 1 vs the same
generation in-process, interleaved request by request.

The full benchmark's first estimate (median E2E of 4 requests minus the median of 4 in-process
runs, minutes apart) could not resolve 2 ms: a 64-token generation of the 134M model takes
~3.5 s and drifts by tens of ms on a shared machine. Here each pair is one streamed HTTP
request and, right after (or right before: the order alternates), the same prompt ids through
the same runtime (`load_generator(...).generate`, the call the naive scheduler makes) in a
worker process pinned to the same core with the same thread count. Drift hits both halves of a
pair alike, so the median of the per-pair differences resolves far below the run-to-run spread.

    overhead = median over pairs of (server E2E - in-process generate time)

The server's E2E is measured by the client from send to the last byte (chat template,
tokenization, scheduling, detokenization, SSE framing, loopback HTTP included). With the naive
scheduler the server runs the same model calls as the worker's generate (prefill, decode steps,
the one Sampler) one request at a time, so the difference is the serving cost alone; with the
continuous scheduler it also includes its batching bookkeeping.

    python benchmarks/serving/overhead.py                     # -> overhead.json and overhead.md
    python benchmarks/serving/overhead.py --models student --pairs 20 --output-lens 64

With one output token the difference is the fixed cost per request (HTTP, chat template,
tokenization, hand-over to the engine thread and back), resolved to a fraction of a ms, written
with the bare-FastAPI floor to results.json as `fixed_overhead_ms` / `bare_fastapi_ms`; with
64 it adds the per-token streaming (and, for `continuous`, the engine's per-step work), but a
64-token generation drifts by tens of percent on a shared machine, so its pairs are noisier.
`run.py` measures the 64-token case as part of the full benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402
import report  # noqa: E402

from slm_toolkit.bench.client import Endpoint, Prompt, make_client, send  # noqa: E402
from slm_toolkit.bench.datasets import random_prompts  # noqa: E402
from slm_toolkit.bench.server import free_port, launched, serve_command  # noqa: E402
from slm_toolkit.core.artifacts import write_json_atomic  # noqa: E402

WORKER = """
import json, sys, time
from slm_toolkit.runtime.base import GenerationConfig
from slm_toolkit.runtime.loader import load_generator
from pathlib import Path
gen = load_generator(Path(sys.argv[1]), backend=sys.argv[2], threads=1)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    cfg = GenerationConfig(max_new_tokens=job["new"], min_new_tokens=job["new"], ignore_eos=True)
    t = time.perf_counter()
    out = gen.generate([job["ids"]], cfg)
    dt = time.perf_counter() - t
    print(json.dumps({"s": dt, "tokens": len(out[0])}), flush=True)
"""


BARE_APP = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()
@app.get("/health")
async def health():
    return {"status": "ok"}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


async def _get_times(url: str, n: int) -> list[float]:
    async with make_client(1) as client:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            r = await client.get(url)
            out.append((time.perf_counter() - t) * 1000)
            r.raise_for_status()
        return out


def http_floor(server_cpus: str, raw: Path, n: int = 200) -> dict:
    """The round trip of GET /health on a bare FastAPI app (uvicorn, the same pinning, the same
    client): what any Python HTTP server costs on this machine before doing any work."""
    port = free_port()
    cmd = ["taskset", "-c", server_cpus, sys.executable, "-c", BARE_APP, str(port)]
    with launched(cmd, raw / "overhead-bare-fastapi.log", ready_path="/health", port=port, timeout_s=60) as (url, _):
        ms = asyncio.run(_get_times(url + "/health", n))
    return {"what": "GET /health on a bare FastAPI app, same client and pinning", "requests": n, "ms": quantiles(ms)}


class Worker:
    """The in-process reference: a process pinned like the server, generating on request."""

    def __init__(self, folder: Path, backend: str, cpus: str, env: dict):
        cmd = ["taskset", "-c", cpus, sys.executable, "-c", WORKER, str(folder), backend]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **env}
        )
        first = self.proc.stdout.readline()
        if not first or not json.loads(first).get("ready"):
            raise RuntimeError(f"in-process worker did not start (exit {self.proc.poll()})")

    def generate(self, ids: list[int], new: int) -> dict:
        self.proc.stdin.write(json.dumps({"ids": ids, "new": new}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def quantiles(xs: list[float]) -> dict:
    """Median, quartiles, range and a distribution-free 95% confidence interval of the median
    (order statistics of the sorted sample: ranks n/2 -+ 0.98 sqrt(n), the binomial normal
    approximation; the whole range when n is too small for it)."""
    s = sorted(xs)
    n = len(s)
    q = statistics.quantiles(s, n=4) if n > 1 else [s[0]] * 3
    k = max(0, int(n / 2 - 0.98 * n**0.5))
    return {
        "median": statistics.median(s),
        "p25": q[0],
        "p75": q[2],
        "min": s[0],
        "max": s[-1],
        "ci95": [s[k], s[n - 1 - k]],
    }


async def pairs(
    url: str, worker: Worker, prompts: list[str], ids: list[list[int]], new: int, warmup: int
) -> list[dict]:
    ep = Endpoint(url, api="chat", extensions=True, timeout_s=600)
    out = []
    async with make_client(1) as client:
        for i, (text, pid) in enumerate(zip(prompts, ids)):
            order = ("http", "local") if i % 2 == 0 else ("local", "http")  # alternate: no order bias
            pair: dict = {"index": i, "warmup": i < warmup, "first": order[0]}
            for what in order:
                if what == "http":
                    t0 = time.perf_counter()
                    r = await send(client, ep, Prompt(text, new), i, t0, 0.0)
                    if not r.ok:
                        raise RuntimeError(f"request {i} failed: {r.error}")
                    if r.prompt_tokens != len(pid) or r.output_tokens != new:
                        raise RuntimeError(
                            f"request {i}: the server saw {r.prompt_tokens} prompt / {r.output_tokens} "
                            f"output tokens, the worker {len(pid)} / {new}: not the same generation"
                        )
                    pair["http_ms"] = r.e2el_s * 1000
                else:
                    w = worker.generate(pid, new)
                    if w["tokens"] != new:
                        raise RuntimeError(f"worker generated {w['tokens']} tokens, not {new}")
                    pair["local_ms"] = w["s"] * 1000
            pair["diff_ms"] = pair["http_ms"] - pair["local_ms"]
            out.append(pair)
    return out


def measure(
    model_name: str,
    scheduler: str,
    backend: str,
    *,
    pairs_n: int,
    warmup: int,
    input_len: int,
    output_len: int,
    server_cpus: str,
    raw: Path,
) -> dict:
    """One configuration: `warmup` + `pairs_n` pairs; the per-pair detail and its summary."""
    from transformers import AutoTokenizer

    folder = getattr(models, model_name)(HERE / "_work")
    art = models.onnx(folder) if backend == "onnxruntime" else folder
    tok = AutoTokenizer.from_pretrained(folder)
    pool = random_prompts(pairs_n + warmup, input_len, output_len, 0, tok, as_text=True)
    texts = [p.prompt for p in pool]
    ids = [
        tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True)
        for t in texts
    ]
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cfg = raw / "serve.yaml"
    cfg.write_text("threads: 1\n")
    port = free_port()
    cmd = ["taskset", "-c", server_cpus] + serve_command(
        art, port, backend=backend, scheduler=scheduler, device="cpu", extra=["--config", str(cfg)]
    )
    name = f"{model_name}-{scheduler}-{backend}"
    worker = Worker(art, backend, server_cpus, env)
    try:
        with launched(cmd, raw / f"overhead-{name}.log", env=env, port=port, timeout_s=600) as (url, _proc):
            got = asyncio.run(pairs(url, worker, texts, ids, output_len, warmup))
    finally:
        worker.close()
    kept = [p for p in got if not p["warmup"]]
    res = {
        "model": model_name,
        "scheduler": scheduler,
        "backend": backend,
        "output_len": output_len,
        "pairs": len(kept),
        "diff_ms": quantiles([p["diff_ms"] for p in kept]),
        "http_ms": quantiles([p["http_ms"] for p in kept]),
        "local_ms": quantiles([p["local_ms"] for p in kept]),
        "detail": got,
    }
    d = res["diff_ms"]
    print(
        f"  {name}: overhead median {d['median']:.2f} ms (95% CI {d['ci95'][0]:.2f} to {d['ci95'][1]:.2f}) over "
        f"{len(kept)} pairs; generation {res['local_ms']['median']:.1f} ms",
        flush=True,
    )
    return res


def pairs_for(model_name: str, pairs: int, output_len: int = 64) -> int:
    """The 134M model's long pairs take ~7 s each: a third as many (at least 10)."""
    return pairs if model_name != "llama134m" or output_len <= 8 else max(10, pairs // 3)


FIXED_KEYS = ("fixed_overhead_ms", "fixed_overhead_ci95_ms", "bare_fastapi_ms", "fixed_overhead_above_bare_ms")


def headline(doc: dict) -> dict:
    """The figures results.json carries at top level: the fixed cost per request (overhead of a
    one-token answer, paired; the first model's continuous torch server, the default one), its
    95% CI, the bare FastAPI round trip, and their difference (target: <= 1 ms)."""
    one = [r for r in doc["results"] if r["output_len"] == 1]
    if not one or not doc.get("http_floor"):
        return {}
    best = next((r for r in one if r["scheduler"] == "continuous" and r["backend"] == "torch"), one[0])
    fixed, bare = best["diff_ms"]["median"], doc["http_floor"]["ms"]["median"]
    return {
        "fixed_overhead_ms": fixed,
        "fixed_overhead_ci95_ms": best["diff_ms"]["ci95"],
        "bare_fastapi_ms": bare,
        "fixed_overhead_above_bare_ms": fixed - bare,
        "fixed_overhead_config": {k: best[k] for k in ("model", "scheduler", "backend", "pairs")},
        "fixed_overhead_by_config": [
            {k: r[k] for k in ("model", "scheduler", "backend", "pairs")}
            | {"median": r["diff_ms"]["median"], "ci95": r["diff_ms"]["ci95"]}
            for r in one
        ],
    }


def markdown(doc: dict) -> str:
    lines = [
        "## HTTP overhead per request (paired)",
        "",
        f"Measured {doc['created']} by `python benchmarks/serving/overhead.py` (load average at start "
        f"{doc['loadavg_start'][0]:.1f}): each pair is one streamed chat request to `slm serve` at concurrency 1 "
        f"and the same prompt ids through the same runtime in a worker pinned to the same core, order "
        f"alternating; overhead = median over pairs of (server E2E - in-process time), with a "
        f"distribution-free 95% confidence interval of that median and the p25-p75 spread of the pairs.",
        "",
    ]
    lines += report.overhead_table(doc["results"])
    if doc.get("http_floor"):
        f = doc["http_floor"]["ms"]
        lines += [
            "",
            f"Floor: {doc['http_floor']['what']}: median {f['median']:.2f} ms (p25 {f['p25']:.2f}, "
            f"p75 {f['p75']:.2f}) over {doc['http_floor']['requests']} requests.",
        ]
    head = headline(doc)
    if head:
        lo, hi = head["fixed_overhead_ci95_ms"]
        c = head["fixed_overhead_config"]
        lines += [
            "",
            f"Fixed cost per request ({c['model']}, {c['scheduler']}, {c['backend']}, one output token): "
            f"{head['fixed_overhead_ms']:.2f} ms (95% CI {lo:.2f} to {hi:.2f}) against {head['bare_fastapi_ms']:.2f} ms "
            f"for the bare FastAPI round trip: {head['fixed_overhead_above_bare_ms']:+.2f} ms above it (target <= 1 ms).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="student,llama134m")
    ap.add_argument("--schedulers", default="naive,continuous")
    ap.add_argument("--backends", default="torch")
    ap.add_argument("--pairs", type=int, default=30, help="measured pairs per configuration (llama134m: a third)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--output-lens", default="1,64", help="output lengths to measure, comma list")
    ap.add_argument("--server-cpus", default="1")
    ap.add_argument("--client-cpus", default="0")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--gsm8k", help="folder with GSM8K's train.jsonl (llama134m's tokenizer; default: $SLM_GSM8K)")
    a = ap.parse_args()
    if a.gsm8k:
        os.environ["SLM_GSM8K"] = a.gsm8k
    os.sched_setaffinity(0, {int(c) for c in a.client_cpus.split(",")})
    a.raw = a.out / "raw"
    a.raw.mkdir(parents=True, exist_ok=True)
    doc = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_start": os.getloadavg(),
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
        "results": [],
    }
    doc["http_floor"] = http_floor(a.server_cpus, a.raw)
    for model_name in a.models.split(","):
        for output_len in map(int, a.output_lens.split(",")):
            n = pairs_for(model_name, a.pairs, output_len)
            for backend in a.backends.split(","):
                for scheduler in a.schedulers.split(","):
                    doc["results"].append(
                        measure(
                            model_name,
                            scheduler,
                            backend,
                            pairs_n=n,
                            warmup=a.warmup,
                            input_len=a.input_len,
                            output_len=output_len,
                            server_cpus=a.server_cpus,
                            raw=a.raw,
                        )
                    )
    doc["loadavg_end"] = os.getloadavg()
    write_json_atomic(a.out / "overhead.json", doc)
    (a.out / "overhead.md").write_text(markdown(doc))
    results = a.out / "results.json"
    if results.is_file() and headline(doc):  # the headline figures, at top level of the benchmark's results
        full = json.loads(results.read_text())
        full.update(headline(doc))
        write_json_atomic(results, full)
    print(markdown(doc))


if __name__ == "__main__":
    main()
