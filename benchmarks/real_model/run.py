"""Real-model benchmark: SmolLM2-135M-Instruct on GSM8K, the toolkit's artifacts against peers.

    python benchmarks/real_model/run.py --gsm8k $SLM_GSM8K --run-dir runs/smollm2-gsm8k \
        --trunc-run-dir runs/smollm2-gsm8k-trunc --llama-python /work/benchenv/venv/bin/python
    python benchmarks/real_model/run.py --smoke ...     # every engine once, tiny budgets (< 2 min
                                                         # once the artifacts are built)

Rows (model x runtime x threads, batch 1):
    teacher      hf_generate_fp32, slm_torch_fp32, slm_ort_fp32, slm_ort_int8, slm_ort_int4,
                 optimum_ort_int8, ort_genai_int4, llama_cpp (the original Q4_1 GGUF)
    pruned       slm_torch_fp32                        (the run's prune stage)
    healed_full  slm_torch_fp32, slm_ort_fp32          (the run's distill stage, full sequences)
    healed_trunc slm_torch_fp32                        (the truncated run's distill stage)
    int8 / int8w / int4  slm_ort_int8 / slm_ort_int8w / slm_ort_int4   (the healed student, quantized:
                 dynamic int8, weight-only 8-bit MatMulNBits, 4-bit MatMulNBits)
Quality (once per row, thread count does not change it): ppl_cot / ppl_answer over the same
--ppl-n GSM8K test problems (teacher-forced, measures/scoring.py; null where the runtime cannot
score), agreement = share of the teacher's greedy tokens (slm_torch_fp32, --max-new tokens on
the first --em-n problems) the row also picks, exact_match on those --em-n problems.
Speed: a --prompt-len-token prompt; prefill_ms = time of a 1-token generation, decode_tok_s =
N / (T(N + 1 tokens) - T(1 token)); every engine once per round, rounds interleaved, median
over --rounds (spread p25-p75 in raw.json and results.md), for each of --threads.
Writes results.json ({"rows": [...]}, exactly ROW_FIELDS), raw.json, results.md, results.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import artifacts  # noqa: E402
import engines  # noqa: E402
import report  # noqa: E402

ROW_FIELDS = (
    "model",
    "runtime",
    "threads",
    "batch",
    "params",
    "bytes",
    "ppl_cot",
    "ppl_answer",
    "agreement",
    "exact_match",
    "decode_tok_s",
    "prefill_ms",
    "train_flops",
    "train_cpu_s",
    "peak_memory_mb",
)
TRAIN_FIELDS = ("train_flops", "train_cpu_s", "peak_memory_mb")


@dataclass
class Spec:
    model: str
    runtime: str
    make: Callable[[int], Any]  # threads -> engine
    folder: Path  # what is measured for bytes and the cache key
    params: int
    train: dict[str, Any] = field(default_factory=dict)
    skip: str | None = None  # why the row cannot run

    @property
    def name(self) -> str:
        return f"{self.model}/{self.runtime}"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from slm_toolkit.core.runlog import quiet_run

    work = Path(args.work).expanduser()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_run(work / "bench.log"):
        return run(args, work, out)


def parse(argv: list[str] | None) -> argparse.Namespace:
    from slm_toolkit.core.paths import cache_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gsm8k", default=os.environ.get("SLM_GSM8K"), help="folder with GSM8K's test.jsonl")
    ap.add_argument("--run-dir", help="a finished run of recipes/smollm2-gsm8k.yaml (pruned, healed_full, int8/int4)")
    ap.add_argument("--trunc-run-dir", help="the truncated-healing run (healed_trunc)")
    ap.add_argument("--llama-python", default=os.environ.get("SLM_LLAMA_PYTHON"), help="python with llama_cpp")
    ap.add_argument("--genai-python", default=os.environ.get("SLM_GENAI_PYTHON"), help="python with genai's builder")
    ap.add_argument("--work", default=str(cache_dir() / "bench-real-model"), help="artifacts and caches")
    ap.add_argument("--out", default=str(HERE), help="where results.* go")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--ppl-n", type=int, default=200)
    ap.add_argument("--em-n", type=int, default=64)
    ap.add_argument("--max-new", type=int, default=256)
    ap.add_argument("--smoke", action="store_true", help="tiny budgets, results under --work/smoke")
    ap.add_argument(
        "--quality-only",
        action="store_true",
        help="fill the quality cache and stop (it does not time anything: it may run beside other work)",
    )
    args = ap.parse_args(argv)
    if not args.gsm8k or not (Path(args.gsm8k) / "test.jsonl").is_file():
        ap.error("--gsm8k (or $SLM_GSM8K) must name a folder with GSM8K's test.jsonl")
    if args.smoke:
        args.threads, args.rounds, args.prompt_len, args.new_tokens = [1], 1, 32, 8
        args.ppl_n, args.em_n, args.max_new = 3, 2, 12
        args.out = str(Path(args.work).expanduser() / "smoke")
    return args


def run(args: argparse.Namespace, work: Path, out: Path) -> int:
    from slm_toolkit.data.loaders import load_jsonl_examples
    from slm_toolkit.models.load import load_tokenizer

    t_start = time.perf_counter()
    teacher = artifacts.teacher_folder()
    tok = load_tokenizer(teacher)
    examples = load_jsonl_examples(Path(args.gsm8k) / "test.jsonl", "gsm8k")[: args.ppl_n]
    specs = build_specs(args, work, teacher)
    settings = {k: getattr(args, k) for k in ("ppl_n", "em_n", "max_new", "prompt_len", "new_tokens", "rounds")}
    teacher_tokens = reference_tokens(specs, tok, examples[: args.em_n], args.max_new, work)
    quality = {s.name: measure_quality(s, tok, examples, teacher_tokens, args, work) for s in specs if not s.skip}
    if args.quality_only:
        print(json.dumps(quality, indent=1))
        return 0
    prompt = fixed_prompt(tok, examples, args.prompt_len)
    speed = {t: measure_speed([s for s in specs if not s.skip], t, prompt, args) for t in args.threads}
    rows = make_rows(specs, quality, speed, args.threads)
    raw = {
        "settings": settings,
        "skipped": {s.name: s.skip for s in specs if s.skip},
        "speed": {str(t): v for t, v in speed.items()},
        "quality": quality,
        "wall_s": time.perf_counter() - t_start,
    }
    (out / "results.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    (out / "raw.json").write_text(json.dumps(raw, indent=1) + "\n")
    report.write(out, rows, raw)
    print(f"wrote {out}/results.json, raw.json, results.md, results.png in {raw['wall_s']:.0f} s")
    return 0


# ----- what is measured


def build_specs(args: argparse.Namespace, work: Path, teacher: Path) -> list[Spec]:
    teacher_params = _params(teacher)
    onnx = artifacts.onnx_set(teacher, work / "teacher")
    specs = [
        Spec("teacher", "hf_generate_fp32", lambda t: engines.HFGenerate(teacher, t), teacher, teacher_params),
        Spec("teacher", "slm_torch_fp32", lambda t: engines.slm(teacher, "torch", t), teacher, teacher_params),
    ]
    for fmt in ("fp32", "int8", "int4"):
        folder = onnx[fmt]
        specs.append(Spec("teacher", f"slm_ort_{fmt}", _slm_ort(folder), folder, teacher_params))
    specs.append(
        Spec("teacher", "optimum_ort_int8", lambda t: engines.OptimumOrt(onnx["int8"], t), onnx["int8"], teacher_params)
    )
    genai, why = (work / "teacher" / "genai_int4", None)
    if not (genai / "genai_config.json").is_file():
        genai, why = (
            (None, "not built (run once without --smoke)")
            if args.smoke
            else artifacts.genai_int4(teacher, work / "teacher", engines.python_of(args.genai_python))
        )
    specs.append(
        Spec(
            "teacher",
            "ort_genai_int4",
            lambda t: engines.GenaiInt4(genai, t, teacher),
            genai or teacher,
            teacher_params,
            skip=why,
        )
    )
    llama = engines.python_of(args.llama_python)
    gguf = artifacts.gguf_file()
    specs.append(
        Spec(
            "teacher",
            "llama_cpp",
            lambda t: engines.LlamaCpp(llama, gguf, t, teacher),
            gguf,
            teacher_params,
            skip=None if llama else "no --llama-python (an interpreter with llama_cpp)",
        )
    )
    if args.run_dir:
        found = artifacts.student_onnx(artifacts.run_artifacts(Path(args.run_dir)), work / "student")
        specs += _student_specs(found, "healed_full", with_quantized=True)
    if args.trunc_run_dir:
        found = artifacts.run_artifacts(Path(args.trunc_run_dir))
        specs += [s for s in _student_specs(found, "healed_trunc", with_quantized=False) if s.model == "healed_trunc"]
    return specs


def _student_specs(found: dict[str, Any], healed: str, with_quantized: bool) -> list[Spec]:
    specs = []
    if "pruned" in found:
        p = Path(found["pruned"])
        specs.append(Spec("pruned", "slm_torch_fp32", lambda t: engines.slm(p, "torch", t), p, _params(p)))
    if "healed" in found:
        h, train = Path(found["healed"]), dict(found.get("train") or {})
        n = _params(h)
        specs.append(Spec(healed, "slm_torch_fp32", lambda t: engines.slm(h, "torch", t), h, n, train))
        if with_quantized and "onnx" in found:
            specs.append(Spec(healed, "slm_ort_fp32", _slm_ort(Path(found["onnx"])), Path(found["onnx"]), n, train))
        if with_quantized:
            for fmt in artifacts.STUDENT_SCHEMES:
                if fmt in found:
                    folder = Path(found[fmt])
                    specs.append(Spec(fmt, f"slm_ort_{fmt}", _slm_ort(folder), folder, n))
    return specs


def _slm_ort(folder: Path) -> Callable[[int], Any]:
    return lambda t: engines.slm(folder, "onnxruntime", t)


def _params(hf_folder: Path) -> int:
    from slm_toolkit.measures.metrics import safetensors_parameter_count

    return int(safetensors_parameter_count(hf_folder) or 0)


def _bytes(path: Path) -> int:
    from slm_toolkit.measures.metrics import bytes_on_disk

    return int(bytes_on_disk(path))


# ----- quality


def reference_tokens(specs: list[Spec], tok: Any, examples: list, max_new: int, work: Path) -> list[list[int]]:
    """The teacher's (slm_torch_fp32) greedy tokens on `examples`, cached."""
    from slm_toolkit.measures.metrics import greedy_generations

    spec = next(s for s in specs if s.name == "teacher/slm_torch_fp32")
    cache = work / "quality" / f"teacher-tokens-{_key(spec, len(examples), max_new)}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    tokens = greedy_generations(spec.make(2), tok, examples, max_new, batch_size=16, progress=True, desc="teacher")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(tokens))
    return tokens


def measure_quality(spec: Spec, tok: Any, examples: list, teacher_tokens, args, work: Path) -> dict[str, Any]:
    from slm_toolkit.data.segments import prompt_ids
    from slm_toolkit.measures import metrics as M
    from slm_toolkit.measures import scoring as S

    cache = work / "quality" / f"{spec.model}-{spec.runtime}-{_key(spec, args.ppl_n, args.em_n, args.max_new)}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    engine = spec.make(max(args.threads))
    t0 = time.perf_counter()
    try:
        ppl = S.segment_perplexity(engine, tok, examples, batch_size=16)
        em_examples = examples[: args.em_n]
        prompts = [prompt_ids(tok, ex.prompt) for ex in em_examples]
        agreement = S.greedy_agreement(engine, prompts, teacher_tokens, batch_size=16)
        generations = M.greedy_generations(engine, tok, em_examples, args.max_new, batch_size=16)
        em = M.answer_scores(em_examples, M.answers_of(tok, generations))
    finally:
        if hasattr(engine, "close"):
            engine.close()
    result = {
        "ppl_cot": ppl.get("ppl_cot"),
        "ppl_answer": ppl.get("ppl_answer"),
        "agreement": agreement,
        "exact_match": em["accuracy"],
        "answer_rate": em["answer_rate"],
        "n_ppl": len(examples),
        "n_exact_match": len(em_examples),
        "quality_s": time.perf_counter() - t0,
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result))
    return result


def _key(spec: Spec, *settings: Any) -> str:
    h = hashlib.sha256(repr(settings).encode())
    root = Path(spec.folder)
    files = (
        [root]
        if root.is_file()
        else sorted(p for p in root.rglob("*") if p.is_file() and p.name != artifacts.MADE_FROM)
    )
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


# ----- speed


def fixed_prompt(tok: Any, examples: list, length: int) -> list[int]:
    """`length` tokens of GSM8K questions, rendered as a chat prompt's opening."""
    from slm_toolkit.data.segments import prompt_ids

    ids: list[int] = []
    for ex in examples:
        ids += prompt_ids(tok, ex.prompt)
        if len(ids) >= length:
            return ids[:length]
    raise ValueError(f"the examples hold fewer than {length} prompt tokens")


def measure_speed(specs: list[Spec], threads: int, prompt: list[int], args) -> dict[str, Any]:
    from slm_toolkit.runtime.base import GenerationConfig

    loaded = {}
    for s in specs:
        loaded[s.name] = s.make(threads)
    one = GenerationConfig(max_new_tokens=1, min_new_tokens=1, ignore_eos=True)
    many = GenerationConfig(max_new_tokens=args.new_tokens + 1, min_new_tokens=args.new_tokens + 1, ignore_eos=True)
    for engine in loaded.values():  # warm-up
        engine.generate([prompt], GenerationConfig(max_new_tokens=4, min_new_tokens=4, ignore_eos=True))
    runs: dict[str, dict[str, list[float]]] = {n: {"prefill_ms": [], "decode_tok_s": []} for n in loaded}
    for _ in range(args.rounds):
        for name, engine in loaded.items():  # interleaved: drift hits every engine alike
            t0 = time.perf_counter()
            engine.generate([prompt], one)
            t1 = time.perf_counter()
            engine.generate([prompt], many)
            t2 = time.perf_counter()
            runs[name]["prefill_ms"].append((t1 - t0) * 1000)
            runs[name]["decode_tok_s"].append(args.new_tokens / max((t2 - t1) - (t1 - t0), 1e-9))
    for engine in loaded.values():
        if hasattr(engine, "close"):
            engine.close()
    return {name: {k: _stats(v) for k, v in r.items()} for name, r in runs.items()}


def _stats(values: list[float]) -> dict[str, Any]:
    spread = 0.0
    if len(values) >= 2:
        q = statistics.quantiles(values, n=4, method="inclusive")
        spread = q[2] - q[0]
    return {"median": statistics.median(values), "spread": spread, "rounds": values}


# ----- rows


def make_rows(specs: list[Spec], quality: dict, speed: dict, threads: list[int]) -> list[dict[str, Any]]:
    rows = []
    for s in specs:
        if s.skip:
            continue
        q = quality[s.name]
        for t in threads:
            sp = speed[t][s.name]
            row = {
                "model": s.model,
                "runtime": s.runtime,
                "threads": t,
                "batch": 1,
                "params": s.params,
                "bytes": _bytes(s.folder),
                "ppl_cot": q["ppl_cot"],
                "ppl_answer": q["ppl_answer"],
                "agreement": q["agreement"],
                "exact_match": q["exact_match"],
                "decode_tok_s": sp["decode_tok_s"]["median"],
                "prefill_ms": sp["prefill_ms"]["median"],
                **{k: s.train.get(k) for k in TRAIN_FIELDS},
            }
            rows.append({k: row[k] for k in ROW_FIELDS})
    return rows


if __name__ == "__main__":
    sys.exit(main())
