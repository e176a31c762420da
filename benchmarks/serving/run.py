"""The serving benchmark: the same harness (`slm bench`'s client and metrics) and the same prompts
against our server (naive and continuous scheduler; torch and onnxruntime backends), Hugging
Face's `transformers serve` (with and without --continuous_batching) and the in-process
static-batch ceiling, on the quickstart's student and a 134M Llama. See README.md.

    python benchmarks/serving/run.py                       # the full run (results in benchmarks/serving/)
    python benchmarks/serving/run.py --smoke               # a tiny run into _work/smoke/

Servers run pinned to --server-cpus (one core by default) with one thread; the load generator
runs on --client-cpus, so the client never competes with the server for its core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402
import overhead  # noqa: E402
import report  # noqa: E402

from slm_toolkit.bench.client import Endpoint  # noqa: E402
from slm_toolkit.bench.datasets import random_prompts  # noqa: E402
from slm_toolkit.bench.load import Level  # noqa: E402
from slm_toolkit.bench.runner import measure_level  # noqa: E402
from slm_toolkit.bench.server import cpu_seconds, free_port, launched, serve_command  # noqa: E402

CONFIGS = [  # (server, scheduler, backend), in order of importance (a --budget-min may cut the tail)
    ("slm", "continuous", "torch"),
    ("slm", "naive", "torch"),
    ("transformers_serve", "naive", "torch"),
    ("transformers_serve", "continuous", "torch"),
    ("slm", "continuous", "onnxruntime"),
    ("slm", "naive", "onnxruntime"),
]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="llama134m,student")
    ap.add_argument("--concurrency", default="1,4,16,32")
    ap.add_argument("--requests", default="1:4,4:8,16:32,32:64", help="measured requests per level, c:n,...")
    ap.add_argument("--configs", default="all", help="comma list of server:scheduler:backend, or all")
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--static-repeats", type=int, default=3)
    ap.add_argument("--idle-seconds", type=float, default=10.0, help="idle CPU window of each slm server")
    ap.add_argument("--server-cpus", default="1")
    ap.add_argument("--client-cpus", default="0")
    ap.add_argument("--request-timeout", type=float, default=300.0)
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument(
        "--ts-pydeps",
        type=Path,
        default=HERE / "_work" / "pydeps",
        help="folder with `transformers serve`'s extra dependency (openai), see README",
    )
    ap.add_argument(
        "--overhead-pairs",
        type=int,
        default=30,
        help="paired requests for the HTTP overhead (overhead.py; llama134m a third), 0 = skip",
    )
    ap.add_argument("--budget-min", type=float, default=1e9, help="skip configurations started after this")
    ap.add_argument("--smoke", action="store_true", help="tiny settings into _work/smoke")
    ap.add_argument("--note", default="", help="free text recorded in results.json (e.g. what was reduced)")
    ap.add_argument("--gsm8k", help="folder with GSM8K's train.jsonl (llama134m's tokenizer; default: $SLM_GSM8K)")
    a = ap.parse_args()
    if a.gsm8k:
        os.environ["SLM_GSM8K"] = a.gsm8k
    if a.smoke:
        a.models, a.concurrency, a.requests, a.output_len = "student", "1,4", "1:2,4:4", 8
        a.static_repeats, a.idle_seconds, a.out = 1, 2.0, HERE / "_work" / "smoke"
        a.overhead_pairs = 4
    return a


def level_counts(concurrency: str, requests: str) -> dict[int, int]:
    table = dict(tuple(map(int, kv.split(":"))) for kv in requests.split(","))
    return {c: table.get(c, max(8, 2 * c)) for c in map(int, concurrency.split(","))}


def server_cmd(cfg, folder: Path, onnx: Path | None, port: int, a, serve_yaml: Path) -> tuple[list[str], str]:
    server, scheduler, backend = cfg
    pin = ["taskset", "-c", a.server_cpus]
    if server == "slm":
        art = onnx if backend == "onnxruntime" else folder
        cmd = serve_command(
            art,
            port,
            backend=backend,
            scheduler=scheduler,
            max_batch_size=a.max_batch_size,
            device="cpu",
            extra=["--config", str(serve_yaml)],
        )
        return pin + cmd, "/ready"
    ts = shutil.which("transformers") or str(Path(sys.executable).with_name("transformers"))
    cmd = [
        ts,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--force_model",
        str(folder),
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--log_level",
        "warning",
    ]
    return pin + cmd + (["--continuous_batching"] if scheduler == "continuous" else []), "/health"


def idle_cpu_percent(pid: int, seconds: float) -> float:
    start = cpu_seconds(pid)
    time.sleep(seconds)
    return 100.0 * (cpu_seconds(pid) - start) / seconds


def bench_config(cfg, folder, onnx, pool, counts, a, raw_dir: Path, count_tokens) -> tuple[list[dict], dict]:
    """Serve one configuration, measure every level; rows for results.json and a status dict."""
    server, scheduler, backend = cfg
    name = f"{folder.name}-{server}-{scheduler}-{backend}"
    serve_yaml = raw_dir / "serve.yaml"
    serve_yaml.write_text("threads: 1\n")
    port = free_port()
    cmd, ready = server_cmd(cfg, folder, onnx, port, a, serve_yaml)
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if server == "transformers_serve" and a.ts_pydeps.is_dir():  # its `openai` dependency, kept out of the venv
        env["PYTHONPATH"] = str(a.ts_pydeps)
    status: dict = {"config": name, "command": " ".join(cmd)}
    rows, levels = [], []
    t0 = time.perf_counter()
    try:
        with launched(cmd, raw_dir / f"{name}.log", ready_path=ready, env=env, port=port, timeout_s=600) as (url, proc):
            status["start_s"] = time.perf_counter() - t0
            if server == "slm":
                time.sleep(1.0)
                status["idle_cpu_percent"] = idle_cpu_percent(proc.pid, a.idle_seconds)
            ep = Endpoint(
                url,
                api="chat",
                model=str(folder) if server != "slm" else None,
                extensions=server == "slm",
                timeout_s=a.request_timeout,
                count_tokens=count_tokens,
            )
            for i, (c, n) in enumerate(counts.items()):  # warm-up before the first level only: the server stays warm
                warm = pool[: a.warmup] if i == 0 else []
                lv = measure_level(ep, Level(c), pool[a.warmup : a.warmup + n], warm, 0, None, None)
                levels.append(lv)
                rows.append(report.row(lv, server, scheduler, backend, folder.name, c))
                print(
                    f"    {name} c{c}: {lv['completed']:.0f}/{n} ok, {lv['output_throughput']:.1f} tok/s, "
                    f"TTFT med {lv['median_ttft_ms'] or 0:.0f} ms p99 {lv['p99_ttft_ms'] or 0:.0f} ms",
                    flush=True,
                )
                if lv["completed"] == 0:  # a broken configuration: record why, skip the rest
                    status["error"] = lv["warnings"][-1] if lv["warnings"] else "every request failed"
                    break
    except Exception as exc:  # the server did not start: record why
        status["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[-1500:]}"
        print(f"    {name}: FAILED {status['error'][:300]}", flush=True)
    status["wall_s"] = time.perf_counter() - t0
    if status.get("error"):  # the server's own last error line says why
        log = (raw_dir / f"{name}.log").read_text(errors="replace").splitlines()
        status["log_error"] = next((ln for ln in reversed(log) if "Error" in ln and "torchao" not in ln), None)
    report.save_raw(raw_dir / f"{name}.json", levels, status)
    return rows, status


def run_static(folder: Path, prompt_ids: list[list[int]], a, raw_dir: Path) -> dict:
    pj, out = raw_dir / f"{folder.name}-prompts.json", raw_dir / f"{folder.name}-inprocess.json"
    pj.write_text(json.dumps(prompt_ids))
    cmd = [
        "taskset",
        "-c",
        a.server_cpus,
        sys.executable,
        str(HERE / "inprocess.py"),
        str(folder),
        str(pj),
        str(out),
        "--new",
        str(a.output_len),
        "--batch",
        "16",
        "--repeats",
        str(a.static_repeats),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-1500:]}
    return json.loads(out.read_text())


def main() -> None:
    a = parse_args()
    from transformers import AutoTokenizer

    os.sched_setaffinity(0, {int(c) for c in a.client_cpus.split(",")})
    work = HERE / "_work"
    counts = level_counts(a.concurrency, a.requests)
    wanted = CONFIGS if a.configs == "all" else [tuple(c.split(":")) for c in a.configs.split(",")]
    raw_dir = a.out / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    rows, statuses, inproc, paired = [], [], {}, {}
    started, load_start = time.time(), os.getloadavg()
    for model_name in a.models.split(","):
        folder = getattr(models, model_name)(work)
        needs_onnx = any(b == "onnxruntime" for _, _, b in wanted)
        onnx = models.onnx(folder) if needs_onnx else None
        tok = AutoTokenizer.from_pretrained(folder)
        pool = random_prompts(a.warmup + max(counts.values()), a.input_len, a.output_len, 0, tok, as_text=True)
        ids = [
            tok.apply_chat_template([{"role": "user", "content": p.prompt}], add_generation_prompt=True, tokenize=True)
            for p in pool[a.warmup :]
        ]
        print(f"== {model_name}: prompts of {min(map(len, ids))}-{max(map(len, ids))} tokens", flush=True)
        count = lambda text, tok=tok: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        if time.time() - started < a.budget_min * 60:
            print(f"  in-process static batch of 16 ({model_name})", flush=True)
            inproc[model_name] = run_static(folder, ids, a, raw_dir)
            rows += report.static_rows(inproc[model_name], model_name)
        for cfg in wanted:
            if time.time() - started > a.budget_min * 60:
                statuses.append({"config": f"{folder.name}-{'-'.join(cfg)}", "error": "skipped: time budget spent"})
                continue
            r, s = bench_config(cfg, folder, onnx, pool, counts, a, raw_dir, count)
            rows += r
            statuses.append(s)
        if a.overhead_pairs and time.time() - started < a.budget_min * 60:
            print(f"  HTTP overhead, paired ({model_name})", flush=True)
            n = overhead.pairs_for(model_name, a.overhead_pairs, a.output_len)
            for sched in ("naive", "continuous"):
                if ("slm", sched, "torch") in wanted:
                    paired.setdefault(model_name, {})[sched] = overhead.measure(
                        model_name,
                        sched,
                        "torch",
                        pairs_n=n,
                        warmup=a.warmup,
                        input_len=a.input_len,
                        output_len=a.output_len,
                        server_cpus=a.server_cpus,
                        raw=raw_dir,
                    )
    doc = report.build(rows, statuses, inproc, vars(a), time.time() - started, paired)
    doc["environment"]["loadavg_start"], doc["environment"]["loadavg_end"] = load_start, os.getloadavg()
    report.write(doc, a.out)
    print(f"wrote {a.out / 'results.json'} and results.md ({(time.time() - started) / 60:.1f} min)")


if __name__ == "__main__":
    main()
