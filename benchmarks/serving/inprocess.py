"""In-process references, run in their own process pinned like the servers:

- the static-batch ceiling: one batch of 16 prompts through transformers' `generate` (greedy,
  every row decodes `new` tokens), median of `repeats` after a warm-up;
- batch 1 through the toolkit's own runtime (`load_generator(...).generate`, the code the
  server's engine drives), per prompt, for the HTTP overhead (server E2E at concurrency 1
  minus this).

    python inprocess.py MODEL_DIR PROMPTS.json OUT.json --new 64 --batch 16 --repeats 3 --single 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def static_batch(folder: Path, prompts: list[list[int]], new: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    pad = tok.pad_token_id
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def once(n):
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=pad)
        assert out.shape[1] == width + n
        return time.perf_counter() - t

    once(4)  # warm-up
    times = [once(new) for _ in range(repeats)]
    med = statistics.median(times)
    return {"batch": len(prompts), "new_tokens": new, "seconds": times, "median_s": med,
            "output_throughput": len(prompts) * new / med}


def single(folder: Path, prompts: list[list[int]], new: int) -> dict:
    from slm_toolkit.runtime.base import GenerationConfig
    from slm_toolkit.runtime.loader import load_generator

    gen = load_generator(folder, backend="torch", threads=1)
    cfg = GenerationConfig(max_new_tokens=new, min_new_tokens=new, ignore_eos=True)
    gen.generate([prompts[0]], GenerationConfig(max_new_tokens=4))  # warm-up
    times = []
    for p in prompts:
        t = time.perf_counter()
        out = gen.generate([p], cfg)
        times.append(time.perf_counter() - t)
        assert len(out[0]) == new, len(out[0])
    return {"seconds": times, "median_ms": statistics.median(times) * 1000}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("prompts", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--single", type=int, default=4, help="batch-1 generations for the HTTP overhead")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    prompts = json.loads(a.prompts.read_text())
    res = {"static": static_batch(a.model, prompts[: a.batch], a.new, a.repeats)}
    if a.single:
        res["single"] = single(a.model, prompts[: a.single], a.new)
    a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
