"""Inference benchmark: decode tokens/s and prefill latency of every variant, interleaved.

    /work/venv/bin/python benchmarks/inference/run.py                 # the recorded run
    /work/venv/bin/python benchmarks/inference/run.py --small         # smoke test (seconds)

Per model and thread count, each variant is loaded once, warmed up, then measured in rounds:
every round runs every variant once (interleaved, so drift hits all alike); median and spread
(p25-p75) over >= 5 rounds (9 by default: the shared machines drift by tens of percent). Per call:
    prefill_ms   = time of generate with 1 new token (time to first token, set-up included)
    decode_tok_s = batch * (N - 1) / (T(N new tokens) - T(1 new token))
bound_tok_s is the memory-bandwidth ceiling: batch * read bandwidth / weight bytes per token, the
bandwidth sampled once per round (interleaved like a variant) and its median used.
Writes results.json (one row per model x variant x batch x threads), results.md and results.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import artifacts  # noqa: E402
import variants  # noqa: E402

VARIANTS = [
    "hf_generate_fp32",
    "torch_int8",
    "optimum_ort_fp32",
    "optimum_ort_int8",
    "ort_genai_int4",
    "slm_ort_fp32",
    "slm_ort_int8",
    "slm_ort_int4",
]
FORMAT = {
    "hf_generate_fp32": "fp32",
    "torch_int8": "int8",
    "optimum_ort_fp32": "fp32",
    "optimum_ort_int8": "int8",
    "ort_genai_int4": "int4",
    "slm_ort_fp32": "fp32",
    "slm_ort_int8": "int8",
    "slm_ort_int4": "int4",
}


def prepare(model: str, work: Path, want_genai: bool) -> tuple[dict[str, Path], Path | None, str | None]:
    import genai_env

    root = work / model
    files = {"hf": artifacts.hf_model(model, root / "hf")}
    files.update({f"onnx_{k}": v for k, v in artifacts.onnx_variants(files["hf"], root).items()})
    if not want_genai:
        return files, None, "not requested"
    python, why = genai_env.ensure_env(work / "genai-venv")
    if python is not None:
        why = genai_env.build_int4(python, files["hf"], root / "genai_int4", work / "genai-cache")
        if why is None:
            files["genai_int4"] = root / "genai_int4"
    return files, python, why


def time_call(runner, ids, new_tokens: int) -> float:
    t0 = time.perf_counter()
    runner.run(ids, new_tokens)
    return time.perf_counter() - t0


def measure(runners: dict, ids_by_batch: dict, new_tokens: int, repeats: int, bandwidth) -> tuple[dict, list[float]]:
    """({(variant, batch): {"t1": [...], "tn": [...]}}, bandwidth samples), rounds interleaved
    across variants, one read-bandwidth sample per round."""
    samples = {(v, b): {"t1": [], "tn": []} for v in runners for b in ids_by_batch}
    bw = []
    for r in runners.values():  # warm-up
        for ids in ids_by_batch.values():
            r.run(ids, 2)
    for _ in range(repeats):
        bw.append(bandwidth())
        for b, ids in ids_by_batch.items():
            for v, r in runners.items():
                samples[(v, b)]["t1"].append(time_call(r, ids, 1))
                samples[(v, b)]["tn"].append(time_call(r, ids, new_tokens))
    return samples, bw


def summarize(t1: list[float], tn: list[float], batch: int, new_tokens: int) -> dict:
    """Medians first, then the rate (robust to one noisy round); spread from the per-round rates."""
    tokens = batch * (new_tokens - 1)
    dt = statistics.median(tn) - statistics.median(t1)
    rates = sorted(tokens / (b - a) for a, b in zip(t1, tn) if b > a)
    q = lambda xs: statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3  # noqa: E731
    rq, pq = (q(rates) if rates else [None] * 3), q([t * 1000 for t in t1])
    return {
        "decode_tok_s": tokens / dt if dt > 0 else None,
        "decode_tok_s_p25": rq[0],
        "decode_tok_s_p75": rq[2],
        "round_t1_s": [round(t, 6) for t in t1],
        "round_tn_s": [round(t, 6) for t in tn],
        "decode_ms_per_step": dt * 1000 / (new_tokens - 1),
        "prefill_ms": statistics.median(t1) * 1000,
        "prefill_ms_p25": pq[0],
        "prefill_ms_p75": pq[2],
    }


def bench_model(model: str, args, work: Path) -> list[dict]:
    want = [v for v in args.variants]
    files, genai_python, genai_why = prepare(model, work, "ort_genai_int4" in want)
    bytes_per_token = {
        fmt: artifacts.weight_bytes_per_token(files[f"onnx_{fmt}"] / "model.onnx") for fmt in ("fp32", "int8", "int4")
    }
    vocab = json.loads((files["hf"] / "config.json").read_text())["vocab_size"]
    ids_by_batch = {b: artifacts.prompts(vocab, b, args.prompt_len) for b in args.batches}
    rows = []
    for threads in args.threads:
        probe = artifacts.bandwidth_probe(threads)
        runners, failed = {}, {}
        for v in want:
            try:
                runners[v] = variants.make(v, files, threads, genai_python)
            except Exception as exc:  # the row records why (e.g. genai's environment)
                failed[v] = genai_why if v == "ort_genai_int4" and genai_why else repr(exc)[:300]
        print(f"[{model}, {threads} threads] measuring {list(runners)}; failed: {failed}", flush=True)
        samples, bw = measure(runners, ids_by_batch, args.new_tokens, args.repeats, probe)
        bandwidth = statistics.median(bw)
        for r in runners.values():
            getattr(r, "close", lambda: None)()
        for v in want:
            fmt = FORMAT[v]
            for b in args.batches:
                row = {
                    "model": model,
                    "variant": v,
                    "batch": b,
                    "threads": threads,
                    "bytes": bytes_per_token[fmt],
                    "bound_tok_s": b * bandwidth / bytes_per_token[fmt],
                    "read_bandwidth_gb_s": bandwidth / 1e9,
                    "read_bandwidth_gb_s_p25_p75": [q / 1e9 for q in statistics.quantiles(bw, n=4)[::2]],
                    "new_tokens": args.new_tokens,
                    "prompt_len": args.prompt_len,
                    "repeats": args.repeats,
                }
                row["round_bandwidth_gb_s"] = [round(x / 1e9, 3) for x in bw]
                if v in failed:
                    row.update(decode_tok_s=None, prefill_ms=None, error=failed[v])
                else:
                    row.update(summarize(**samples[(v, b)], batch=b, new_tokens=args.new_tokens))
                rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["demo_student", "llama_134m"])
    p.add_argument("--variants", nargs="+", default=VARIANTS)
    p.add_argument("--threads", nargs="+", type=int, default=[1, os.cpu_count() or 1])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--work", type=Path, default=HERE / "_work")
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--note", default="", help="a line for results.md (e.g. the machine was shared)")
    p.add_argument("--append", action="store_true", help="merge into an existing results.json (run in parts)")
    p.add_argument("--small", action="store_true", help="smoke test: demo_student, 1 thread, few tokens")
    args = p.parse_args()
    if args.small:
        args.models, args.threads, args.batches = ["demo_student"], [1], [1, 2]
        args.new_tokens, args.prompt_len, args.repeats = 8, 8, 2
        args.out = args.work / "small"
    args.threads = sorted(set(args.threads))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = json.loads((args.out / "results.json").read_text()) if args.append else []
    for model in args.models:
        new = bench_model(model, args, args.work)
        keys = {(r["model"], r["variant"], r["batch"], r["threads"]) for r in new}
        rows = [r for r in rows if (r["model"], r["variant"], r["batch"], r["threads"]) not in keys] + new
        (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    import report

    (args.out / "results.md").write_text(report.markdown(rows, args))
    report.plot(rows, args.out / "results.png")
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
