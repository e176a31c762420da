"""The serving engine's schedulers without HTTP: continuous batching vs naive vs the static-batch ceiling.

Same model, same prompts, in one process, interleaved over repeats (median and spread):
  static      one batch of C prompts through Generator.generate (the in-process ceiling)
  continuous  the Engine, C closed-loop clients each sending `waves` requests in turn
  naive       the Engine with scheduler="naive" (one request at a time, plain generate)
Every request decodes exactly `out` tokens (ignore_eos). Output tokens per second of wall time.
The HTTP end-to-end comparison (and other servers) is benchmarks/serving/.

    python benchmarks/serve_engine/run.py --hidden 256 --layers 4 --concurrency 16 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from slm_toolkit.runtime.base import GenerationConfig
from slm_toolkit.runtime.torch import TorchGenerator
from slm_toolkit.serving.engine import Engine, GenRequest, SamplingParams
from slm_toolkit.serving.metrics import ServerMetrics

HERE = Path(__file__).resolve().parent


def build(hidden: int, layers: int, vocab: int) -> TorchGenerator:
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, hidden // 64)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    return TorchGenerator(LlamaForCausalLM(cfg))


def static(gen, prompts, out: int) -> float:
    t = time.perf_counter()
    tokens = gen.generate(prompts, GenerationConfig(max_new_tokens=out, ignore_eos=True))
    return sum(map(len, tokens)) / (time.perf_counter() - t)


def engine(gen, prompts, out: int, concurrency: int, scheduler: str) -> float:
    eng = Engine(lambda: gen, ServerMetrics(), max_batch_size=concurrency, max_queue=len(prompts), scheduler=scheduler)
    eng.start()
    eng.ready.wait()

    async def one(prompt) -> int:
        loop = asyncio.get_running_loop()
        req = GenRequest(
            prompt, SamplingParams(max_tokens=out, ignore_eos=True), loop, asyncio.Queue(), time.perf_counter(), None
        )
        eng.submit(req)
        n = 0
        while (await req.events.get())[0] == "token":
            n += 1
        return n

    async def client(mine) -> int:
        return sum([await one(p) for p in mine])

    async def run() -> float:
        t = time.perf_counter()
        n = sum(await asyncio.gather(*(client(prompts[i::concurrency]) for i in range(concurrency))))
        return n / (time.perf_counter() - t)

    try:
        return asyncio.run(run())
    finally:
        eng.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--waves", type=int, default=2, help="requests per client (continuous)")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--out", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = build(args.hidden, args.layers, args.vocab)
    g = torch.Generator().manual_seed(1)
    prompts = [
        torch.randint(5, args.vocab, (args.prompt_len,), generator=g).tolist()
        for _ in range(args.concurrency * args.waves)
    ]
    c = args.concurrency
    static(gen, prompts[:2], 4)  # warm-up
    runs = {"static": [], "continuous": [], "naive": []}
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits every variant alike
        runs["static"].append(static(gen, prompts[:c], args.out))
        runs["continuous"].append(engine(gen, prompts, args.out, c, "continuous"))
        runs["naive"].append(engine(gen, prompts[:c], args.out, c, "naive"))
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "setup": vars(args)
        | {
            "params_m": round(sum(p.numel() for p in gen.model.parameters()) / 1e6, 1),
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "output_tok_s": {
            k: {"median": round(m, 1), "min": round(min(runs[k]), 1), "max": round(max(runs[k]), 1)}
            for k, m in med.items()
        },
        "continuous_over_static": round(med["continuous"] / med["static"], 3),
        "continuous_over_naive": round(med["continuous"] / med["naive"], 2),
    }
    (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [f"| {k} | {v['median']} | {v['min']}–{v['max']} |" for k, v in result["output_tok_s"].items()]
    md = "\n".join(
        [
            f"# Serving engine schedulers (no HTTP), {result['setup']['params_m']}M-param Llama, "
            f"concurrency {c}, {args.prompt_len}-token prompts, {args.out} output tokens, {args.threads} thread(s)",
            "",
            "| scheduler | output tok/s (median) | spread (min–max) |",
            "|---|---|---|",
            *rows,
            "",
            f"continuous / static ceiling = **{result['continuous_over_static']}**, "
            f"continuous / naive = **{result['continuous_over_naive']}×** "
            f"(load average during the run: {result['setup']['load_avg_1m']:.1f} on {os.cpu_count()} CPUs).",
            "",
            "Command: `python benchmarks/serve_engine/run.py "
            + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
            + "`",
            "",
        ]
    )
    (HERE / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
