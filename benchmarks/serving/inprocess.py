"""The in-process ceiling, run in its own process pinned like the servers: one static batch of
16 prompts through transformers' `generate` (greedy, every row decodes `new` tokens), median
of `repeats` after a warm-up. (The HTTP overhead's in-process half is overhead.py's worker.)

    python inprocess.py MODEL_DIR PROMPTS.json OUT.json --new 64 --batch 16 --repeats 3
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
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=pad,
            )
        assert out.shape[1] == width + n
        return time.perf_counter() - t

    once(4)  # warm-up
    times = [once(new) for _ in range(repeats)]
    med = statistics.median(times)
    return {
        "batch": len(prompts),
        "new_tokens": new,
        "seconds": times,
        "median_s": med,
        "output_throughput": len(prompts) * new / med,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("prompts", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    prompts = json.loads(a.prompts.read_text())
    res = {"static": static_batch(a.model, prompts[: a.batch], a.new, a.repeats)}
    a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
