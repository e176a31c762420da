"""llama.cpp (llama-cpp-python) in its own interpreter: the benchmark-only virtual environment.

    <venv>/bin/python llama_worker.py MODEL.gguf THREADS

Reads one JSON request per line, answers one JSON line:
    {"op": "generate", "prompts": [[ids]], "max_new": n, "min_new": m, "eos": [ids]}
        -> {"tokens": [[ids]]}   greedy, one prompt at a time (batch 1), EOS not included
    {"op": "score", "prefixes": [[ids]], "continuations": [[ids]]}
        -> {"logp": [[...]], "greedy": [[...]]}   teacher-forced, all logits of one pass
Imports only llama_cpp, numpy and the standard library (nothing from the toolkit).
"""

from __future__ import annotations

import json
import sys

import numpy as np
from llama_cpp import Llama

N_CTX = 2048


def _last_logits(llm: Llama) -> np.ndarray:
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))


def generate(llm: Llama, prompt: list[int], max_new: int, min_new: int, eos: set[int]) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    for step in range(max_new):
        logits = _last_logits(llm).copy()
        if step < min_new and eos:
            logits[list(eos)] = -np.inf
        tok = int(logits.argmax())
        if tok in eos and step >= min_new:
            break
        out.append(tok)
        if step + 1 < max_new:
            llm.eval([tok])
    return out


def score(llm: Llama, prefix: list[int], cont: list[int]) -> tuple[list[float], list[int]]:
    llm.reset()
    llm.eval(prefix + cont)
    rows = np.asarray(llm.scores[len(prefix) - 1 : len(prefix) + len(cont) - 1], dtype=np.float64)
    lse = np.log(np.exp(rows - rows.max(-1, keepdims=True)).sum(-1)) + rows.max(-1)
    logp = rows[np.arange(len(cont)), cont] - lse
    return logp.tolist(), rows.argmax(-1).tolist()


def main() -> None:
    path, threads = sys.argv[1], int(sys.argv[2])
    fast = Llama(model_path=path, n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, verbose=False)
    scorer = None
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "generate":
                eos = set(req.get("eos", []))
                tokens = [generate(fast, p, req["max_new"], req.get("min_new", 0), eos) for p in req["prompts"]]
                print(json.dumps({"tokens": tokens}), flush=True)
            elif req["op"] == "score":
                if scorer is None:  # all-position logits cost time: a second context, only when scoring
                    scorer = Llama(
                        model_path=path,
                        n_ctx=N_CTX,
                        n_threads=threads,
                        n_threads_batch=threads,
                        logits_all=True,
                        verbose=False,
                    )
                pairs = [score(scorer, p, c) for p, c in zip(req["prefixes"], req["continuations"])]
                print(json.dumps({"logp": [a for a, _ in pairs], "greedy": [b for _, b in pairs]}), flush=True)
            else:
                print(json.dumps({"error": f"unknown op {req['op']!r}"}), flush=True)
        except Exception as exc:  # reported to the parent, which fails the row with it
            print(json.dumps({"error": repr(exc)}), flush=True)


if __name__ == "__main__":
    main()
