"""The serving check: lm-evaluation-harness (`local-completions`, GSM8K) through `slm serve`.

    python benchmarks/real_model/serve_lm_eval.py runs/smollm2-gsm8k/07-quantize \
        --gsm8k $SLM_GSM8K --lmeval-python /path/to/venv-with-lm-eval/bin/python --limit 50

Starts `slm serve` on the artifact (slm_toolkit.bench.server: 127.0.0.1, access log on), runs the harness against its
/v1/completions with GSM8K read from the local folder (a task file written here: the dataset
hub is not reachable, the prompts and filters are lm-eval's own `gsm8k` task's), then counts the
server's responses by HTTP status from its access log. Every request must answer 200: a
non-200 makes lm-eval retry once and then fail, and it is counted here either way.
Writes serving.json beside results.md and replaces results.md's "## Serving" section.
lm-eval lives in its own environment (it pins its own huggingface-hub and datasets): pass
its interpreter; nothing in the toolkit imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from slm_toolkit.bench import server

HERE = Path(__file__).resolve().parent
SECTION = "## Serving"

# lm-eval's own gsm8k task (lm_eval/tasks/gsm8k/gsm8k.yaml, version 3.0) with the data read from
# local jsonl files instead of the hub.
TASK = """task: gsm8k_local
dataset_path: json
dataset_kwargs:
  data_files:
    train: {train}
    test: {test}
output_type: generate_until
training_split: train
fewshot_split: train
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]
generation_kwargs:
  until: ["Question:", "</s>", "<|im_end|>"]
  do_sample: false
  temperature: 0.0
repeats: 1
num_fewshot: {shots}
filter_list:
  - name: strict-match
    filter:
      - {{function: regex, regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"}}
      - {{function: take_first}}
  - name: flexible-extract
    filter:
      - {{function: regex, group_select: -1, regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"}}
      - {{function: take_first}}
metadata:
  version: 3.0
"""
ACCESS = re.compile(r'"(GET|POST|HEAD) (\S+) HTTP/[\d.]+" (\d{3})')


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifact", help="an artifact folder `slm serve` takes (the recipe's int8 ONNX)")
    ap.add_argument("--gsm8k", default=os.environ.get("SLM_GSM8K"), help="folder with train.jsonl and test.jsonl")
    ap.add_argument("--lmeval-python", default=os.environ.get("SLM_LMEVAL_PYTHON"), help="python with lm_eval")
    ap.add_argument("--limit", type=int, default=50, help="GSM8K test questions")
    ap.add_argument("--shots", type=int, default=5, help="few-shot examples (lm-eval's gsm8k default: 5)")
    ap.add_argument("--max-gen-toks", type=int, default=256)
    ap.add_argument("--concurrent", type=int, default=4, help="requests in flight")
    ap.add_argument("--threads", type=int, default=2, help="the server's model threads")
    ap.add_argument("--port", type=int, default=None, help="default: a free loopback port")
    ap.add_argument("--out", default=str(HERE), help="folder with results.md")
    args = ap.parse_args(argv)
    gsm8k = Path(args.gsm8k or "")
    if not (gsm8k / "test.jsonl").is_file() or not (gsm8k / "train.jsonl").is_file():
        ap.error("--gsm8k (or $SLM_GSM8K) must name a folder with GSM8K's train.jsonl and test.jsonl")
    if not args.lmeval_python or not Path(args.lmeval_python).is_file():
        ap.error("--lmeval-python (or $SLM_LMEVAL_PYTHON) must name a python with lm-eval installed")
    artifact = Path(args.artifact).resolve()
    if not artifact.is_dir():
        ap.error(f"{artifact} is not a folder")

    with tempfile.TemporaryDirectory(prefix="slm-lmeval-") as tmp:
        work = Path(tmp)
        (work / "tasks").mkdir()
        task = TASK.format(
            train=(gsm8k / "train.jsonl").resolve(), test=(gsm8k / "test.jsonl").resolve(), shots=args.shots
        )
        (work / "tasks" / "gsm8k_local.yaml").write_text(task)
        (work / "server.yaml").write_text("access_log: true\n")
        server_log = work / "server.log"
        served = "smollm2-int8"
        extra = ["--threads", str(args.threads), "--config", str(work / "server.yaml"), "--model-name", served]
        cmd = server.serve_command(artifact, args.port or server.free_port(), extra=extra)
        t0 = time.perf_counter()
        with server.launched(cmd, server_log) as (base, _):
            started = time.perf_counter()
            model_args = ",".join(
                [
                    f"model={served}",
                    f"base_url={base}/v1/completions",
                    f"num_concurrent={args.concurrent}",
                    "max_retries=1",
                    "tokenized_requests=False",
                    "tokenizer_backend=huggingface",
                    f"tokenizer={artifact}",
                    f"max_gen_toks={args.max_gen_toks}",
                    "timeout=600",
                ]
            )
            lm = [args.lmeval_python, "-m", "lm_eval", "--model", "local-completions"]
            lm += ["--model_args", model_args, "--tasks", "gsm8k_local", "--include_path", str(work / "tasks")]
            lm += ["--limit", str(args.limit), "--output_path", str(work / "out"), "--log_samples"]
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            proc = subprocess.run(lm, env=env, capture_output=True, text=True)
            eval_s = time.perf_counter() - started
            metrics = httpx.get(base + "/metrics", timeout=10).text
        log_text = server_log.read_text(errors="replace")
        statuses: dict[str, int] = {}
        for _, path, code in ACCESS.findall(log_text):
            if path.startswith("/v1/"):
                statuses[code] = statuses.get(code, 0) + 1
        results = _results(work / "out")
        samples = _samples(work / "out")
        summary = {
            "artifact": str(artifact),
            "served_model": served,
            "harness": "lm-eval " + _version(args.lmeval_python),
            "model": "local-completions",
            "task": f"GSM8K test, first {args.limit} questions, {args.shots}-shot (lm-eval's gsm8k task, local data)",
            "questions_answered": len(samples),
            "lm_eval_exit_code": proc.returncode,
            "http_status_counts": statuses,
            "request_errors": sum(n for code, n in statuses.items() if code != "200"),
            "requests_rejected": _counter(metrics, "requests_rejected_total"),
            "exact_match": results,
            "first_responses": [  # what the harness got back, to read (the model is 89M parameters)
                {"doc_id": r["doc_id"], "target": str(r.get("target", ""))[-40:], "response": _response(r)[:400]}
                for r in sorted(samples, key=lambda r: r["doc_id"])[:3]
            ],
            "concurrency": args.concurrent,
            "server_threads": args.threads,
            "eval_wall_s": round(eval_s, 1),
            "total_wall_s": round(time.perf_counter() - t0, 1),
        }
        out = Path(args.out)
        (out / "serving.json").write_text(json.dumps(summary, indent=1) + "\n")
        _write_section(out / "results.md", summary)
        print(json.dumps(summary, indent=1))
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
        ok = proc.returncode == 0 and summary["request_errors"] == 0 and len(samples) == args.limit
        return 0 if ok else 1


def _counter(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def _results(out: Path) -> dict[str, float]:
    files = sorted(out.rglob("results_*.json"))
    if not files:
        return {}
    res = json.loads(files[-1].read_text())["results"].get("gsm8k_local", {})
    return {k.split(",")[1]: v for k, v in res.items() if k.startswith("exact_match,")}


def _samples(out: Path) -> list[dict]:
    """The harness's logged samples, one per question (keyed by doc_id)."""
    rows = {}
    for f in sorted(out.rglob("samples_gsm8k_local_*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["doc_id"]] = row
    return list(rows.values())


def _response(sample: dict) -> str:
    resps = sample.get("resps") or [[""]]
    first = resps[0][0] if resps and isinstance(resps[0], list) else resps[0]
    return str(first)


def _version(python: str) -> str:
    code = "import importlib.metadata as m; print(m.version('lm_eval'))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip()


def _write_section(results_md: Path, s: dict) -> None:
    em = s["exact_match"]
    codes = ", ".join(f"{n}× {c}" for c, n in sorted(s["http_status_counts"].items())) or "none"
    section = "\n".join(
        [
            SECTION,
            "",
            f"{s['harness']} (`{s['model']}`) through `slm serve` on `{Path(s['artifact']).name}` "
            f"({s['server_threads']} thread{'s' if s['server_threads'] > 1 else ''}, {s['concurrency']} requests in flight): {s['task']}.",
            "",
            "| questions answered | request errors | HTTP responses | exact match (strict) | exact match (flexible) | wall |",
            "|---|---|---|---|---|---|",
            f"| {s['questions_answered']} | {s['request_errors']} | {codes} | {_f(em.get('strict-match'))} "
            f"| {_f(em.get('flexible-extract'))} | {s['eval_wall_s']:.0f} s |",
            "",
            "Reproduce: `python benchmarks/real_model/serve_lm_eval.py <int8 artifact> --gsm8k $SLM_GSM8K "
            "--lmeval-python <python with lm-eval>` (serving.json keeps every figure).",
            "",
        ]
    )
    head = results_md.read_text() if results_md.is_file() else ""
    if SECTION in head:
        head = head[: head.index(SECTION)]
    results_md.write_text(head.rstrip() + ("\n\n" if head.strip() else "") + section)


def _f(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
