"""Truncated, segment-selective KD on the demo task, on converged budgets: the paper's grid, the
protocol variants of the `distill` stage, at <= 0.6x the cost of full-sequence KD.

    python benchmarks/kd_truncation/run.py                  # the full grid (README.md: sizes, time)
    python benchmarks/kd_truncation/run.py --smoke          # < 1 min: tiny random models, temp folder
    python benchmarks/kd_truncation/run.py --probe          # one full-KD run, accuracy every --probe-every steps
    python benchmarks/kd_truncation/run.py --report-only    # rebuild results.md and the plot

Every cell runs the real `distill` stage (slm_toolkit.distill.stage.run) in this process and
evaluates the student with the shared `exact_match` (greedy decoding, KV cache). Cells are run
in a shuffled order within each (group, seed, verify) block so that load changes on a shared
machine fall on all of them alike; ratios are taken within this one run. Rows are appended to
the results file after every cell, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

SUPERVISE = {
    "P+CoT+A": ["prompt", "cot", "answer"],
    "CoT+A": ["cot", "answer"],
    "CoT": ["cot"],
    "P+CoT": ["prompt", "cot"],
    "A": ["answer"],
}
# A cell's protocol keys (besides supervise and teacher) and their defaults: the `truncate` keys
# of the distill stage. fraction 1.0 stands for "no truncation" in results.json.
PROTOCOL = {
    "fraction": 1.0,
    "mode": "head",
    "full_batches": 0.0,
    "schedule": "uniform",
    "mixing": "batch",
    "fraction_start": None,
}


def cell(supervise: str = "P+CoT+A", teacher: str = "offline", **protocol) -> dict:
    unknown = set(protocol) - set(PROTOCOL)
    if unknown:
        raise ValueError(f"unknown protocol keys {sorted(unknown)}")
    return {"supervise": supervise, "teacher": teacher} | PROTOCOL | protocol


def cells(groups: list[str]) -> list[dict]:
    """Every configuration to run once per (verify, seed)."""
    out = []
    if "curve" in groups:  # must-have: the paper's truncation curve for P+CoT+A (100% = full KD)
        out += [cell(fraction=f) for f in (0.25, 0.5, 0.75, 1.0)]
    if "supervision" in groups:  # must-have: the supervision table at 50% and 100% (P+CoT+A is in `curve`)
        out += [cell(s, fraction=f) for s in ("CoT+A", "CoT", "A") for f in (0.5, 1.0)]
    if "protocol" in groups:  # the variants, sized for <= 0.6x of full KD's FLOPs (see README.md)
        # cut to 7 cells so that 3 seeds x 2 verify levels fit one quiet hour on 2 cores
        out += [cell(fraction=0.45, full_batches=0.15, schedule=s) for s in ("uniform", "front", "end")]
        out += [cell(fraction=0.4, full_batches=0.2, schedule="end")]
        out += [cell(fraction=0.45, full_batches=0.15, mixing="example")]
        out += [cell(fraction=0.45, full_batches=0.15, mode="cot_only")]
        out += [cell(fraction=0.5, fraction_start=0.2, full_batches=0.15, schedule="end")]
    return out


def cell_key(c: dict, verify: int, seed: int) -> str:
    keys = ["supervise", "teacher", *PROTOCOL]
    return json.dumps([c.get(k, PROTOCOL.get(k)) for k in keys] + [verify, seed])


def truncate_settings(c: dict) -> dict:
    """The cell's `truncate` keys as the recipe writes them (fraction 1.0 = none set)."""
    keys = {k: c.get(k, d) for k, d in PROTOCOL.items() if c.get(k, d) != d}
    if c.get("fraction", 1.0) < 1.0:
        keys["fraction"] = c["fraction"]
    return keys


def distill_config(c: dict, a: argparse.Namespace, student: Path):
    from slm_toolkit.distill.config import DistillConfig

    return DistillConfig.model_validate(
        {
            "student": str(student),
            "supervise": SUPERVISE[c["supervise"]],
            "truncate": truncate_settings(c),
            "loss": {"kind": "forward_kl", "temperature": 1.0, "ce_weight": 0.0},
            "teacher": {"mode": c["teacher"], "top_k": a.top_k},
            "train": {
                "epochs": 1,
                "max_steps": a.steps,
                "batch_size": a.batch_size,
                "lr": a.lr,
                "schedule": "cosine",
                "warmup": 0.05,
                "clip": 1.0,
                "checkpoint_every": 10**9,
            },
        }
    )


def evaluate(model, tok, examples) -> dict:
    from slm_toolkit.measures.metrics import exact_match, generation_budget
    from slm_toolkit.runtime.torch import TorchGenerator

    gen = TorchGenerator(model, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return exact_match(gen, tok, examples, generation_budget(tok, examples), batch_size=64)


def run_cell(c: dict, verify: int, seed: int, a, models: dict, data: dict, after_step=None) -> dict:
    from slm_toolkit.distill.stage import run
    from slm_toolkit.models.load import load_model
    from slm_toolkit.stage import StageInput

    teacher, student = models[verify]
    bundle = data[verify, seed]
    with tempfile.TemporaryDirectory(prefix="kd_cell_") as tmp:
        workdir = Path(tmp) / "01-distill.tmp"
        workdir.mkdir()
        inp = StageInput(
            artifact=student, model=teacher, data=bundle, workdir=workdir, run_dir=Path(tmp), device="cpu", seed=seed
        )
        out = run(distill_config(c, a, student), inp, after_step=after_step)
        model, tok = load_model(workdir)
        q = evaluate(model, tok, bundle.eval)
    m = out.metrics
    tokens = m["tokens_student"]
    # FLOPs of the cell: student training (6·Ps·tokens) + the teacher scoring the same tokens
    # (2·Pt·tokens), whether it does so online or once into the cache; see README.md.
    flops = m["flops_student"] + 2.0 * m["teacher_parameters"] * tokens
    return dict(
        supervise=c["supervise"],
        fraction=c["fraction"],
        mode=c["mode"],
        full_batches=c["full_batches"],
        schedule=c["schedule"],
        mixing=c["mixing"],
        fraction_start=c["fraction_start"],
        teacher=c["teacher"],
        verify=verify,
        seed=seed,
        accuracy=q["accuracy"],
        answer_rate=q["answer_rate"],
        wall_time_s=out.timings["train_s"],
        step_time_s=out.timings["train_s"] / max(m["steps"], 1),
        cpu_time_s=out.timings["train_cpu_s"],
        peak_memory_mb=m["peak_memory_mb"],
        activation_mb=m["activation_mb"],
        flops=flops,
        tokens=tokens,
        tokens_supervised=m["tokens_supervised"],
        final_loss=m["final_loss"],
        steps=m["steps"],
        examples_without_supervision=m["examples_without_supervision"],
    )


def prepare(a) -> tuple[dict, dict]:
    """Teacher and base student per verify, and the data (training problems per seed)."""
    from slm_toolkit.data.example import DataBundle
    from slm_toolkit.demo.task import generate_examples

    models, data = {}, {}
    for v in a.verify:
        task = {"steps": a.task_steps, "digits": 1, "ops": "+-", "verify": v}
        models[v] = model_folders(a, v, task)
        evals = generate_examples(a.n_eval, seed=22, **task)  # the same held-out problems for every cell
        for s in range(a.seeds):  # each seed distills on its own training problems (one epoch)
            train = generate_examples(a.steps * a.batch_size, seed=11 + 1000 * s, **task)
            data[v, s] = DataBundle(train=train, eval=evals, source="builtin:arith-cot", options={"task": task})
    return models, data


def model_folders(a, v: int, task: dict) -> tuple[Path, Path]:
    if a.smoke:
        return tiny_models(a.out / "models", v)
    if a.models_dir:  # fixed folders (the builtin recipes may change while a benchmark runs)
        return a.models_dir / f"teacher-v{v}", a.models_dir / f"student-v{v}"
    from slm_toolkit.demo.builtin import builtin_model

    return builtin_model("arith-teacher", task=task), builtin_model("arith-student", task=task)


def tiny_models(folder: Path, v: int) -> tuple[Path, Path]:
    """--smoke: random tiny Llamas over the demo tokenizer (built from config, seconds)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from slm_toolkit.demo.tokenizer import build_demo_tokenizer

    tok = build_demo_tokenizer()
    out = []
    for name, hidden, layers in (("teacher", 32, 2), ("student", 16, 1)):
        path = folder / f"{name}-v{v}"
        if not (path / "config.json").exists():
            torch.manual_seed(hidden)
            cfg = LlamaConfig(
                vocab_size=len(tok),
                hidden_size=hidden,
                intermediate_size=2 * hidden,
                num_hidden_layers=layers,
                num_attention_heads=2,
                num_key_value_heads=2,
                max_position_embeddings=256,
                pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
            )
            LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
            tok.save_pretrained(path)
        out.append(path)
    return out[0], out[1]


def probe(a) -> None:
    """One full-sequence KD run (P+CoT+A, the grid's settings) with held-out accuracy every
    `--probe-every` steps: how many steps the grid needs to converge, and what a step costs."""
    import torch

    torch.set_num_threads(1)
    a.seeds = 1
    from slm_toolkit.models.load import load_model

    models, data = prepare(a)
    for v in a.verify:
        tok = load_model(models[v][1])[1]
        curve: list[dict] = []
        eval_cpu = [0.0]

        def after_step(done, model, v=v, tok=tok, curve=curve, eval_cpu=eval_cpu):
            if done % a.probe_every and done != a.steps:
                return
            t = time.process_time()
            q = evaluate(model, tok, data[v, 0].eval)
            eval_cpu[0] += time.process_time() - t
            curve.append({"step": done, "accuracy": q["accuracy"], "answer_rate": q["answer_rate"]})
            print(
                f"verify={v} step {done}: accuracy {q['accuracy']:.3f} answer rate {q['answer_rate']:.2f}", flush=True
            )

        t0 = time.perf_counter()
        row = run_cell(cell(), v, 0, a, models, data, after_step=after_step)
        result = {
            "verify": v,
            "settings": {k: getattr(a, k) for k in ("steps", "batch_size", "lr", "top_k", "n_eval", "task_steps")},
            "curve": curve,
            "train_cpu_s_without_evals": row["cpu_time_s"] - eval_cpu[0],
            "train_cpu_s_per_step": (row["cpu_time_s"] - eval_cpu[0]) / row["steps"],
            "eval_cpu_s_each": eval_cpu[0] / max(1, len(curve)),
            "wall_s_total": time.perf_counter() - t0,
            "final": {k: row[k] for k in ("accuracy", "answer_rate", "peak_memory_mb", "flops", "tokens")},
        }
        path = a.out / f"probe_v{v}.json"
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--groups",
        nargs="+",
        default=["curve", "supervision", "protocol"],
        help="run in this order (each group for all seeds): curve supervision protocol",
    )
    p.add_argument("--deadline", default=None, help="UTC HH:MM after which no new cell starts")
    p.add_argument("--results", default="results.json", help="file name in --out (parallel runs: one each)")
    p.add_argument("--verify", nargs="+", type=int, default=[0, 2])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=600, help="optimizer steps per cell (one epoch of fresh problems)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--top-k", type=int, default=32, help=">= the demo vocabulary (27): the full distribution")
    p.add_argument("--n-eval", type=int, default=300)
    p.add_argument("--task-steps", type=int, default=4)
    p.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="folder with teacher-v<verify>/ and student-v<verify>/ (else the builtin demo models)",
    )
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--smoke", action="store_true", help="< 1 min: tiny random models, 3 steps, temp folder")
    p.add_argument("--probe", action="store_true", help="one full-KD run with an accuracy curve (probe_v<verify>.json)")
    p.add_argument("--probe-every", type=int, default=50)
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args()
    if a.smoke:
        a.steps, a.n_eval, a.seeds, a.batch_size, a.verify = 3, 8, 1, 8, [0]
        a.out = Path(tempfile.mkdtemp(prefix="kd_smoke_"))
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # RSS must follow freed tensors (accounting.py)
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.probe:
        probe(a)
        return
    if not a.report_only:
        run_all(a, a.out / a.results)
    from report import write_report

    write_report(merge_results(a.out), a.out)
    print(f"wrote {a.out / 'results.md'}")


def merge_results(out: Path) -> list[dict]:
    """results.json plus the rows of any parallel results_*.json, deduplicated; saved as results.json."""
    rows, seen = [], set()
    for path in [out / "results.json", *sorted(out.glob("results_*.json"))]:
        if path.exists():
            for r in json.loads(path.read_text()):
                key = cell_key(r, r["verify"], r["seed"])
                if key not in seen:
                    seen.add(key)
                    rows.append(r)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    return rows


def past(deadline: str | None) -> bool:
    if not deadline:
        return False
    now = time.gmtime()
    hh, mm = (int(x) for x in deadline.split(":"))
    return (now.tm_hour, now.tm_min) >= (hh, mm)


def run_all(a, results_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    rows = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {cell_key(r, r["verify"], r["seed"]) for r in rows}
    # the training settings every cell shares (which groups / verifies a call ran is the rows' business)
    keys = ("steps", "batch_size", "lr", "top_k", "n_eval", "task_steps", "models_dir")
    (a.out / "settings.json").write_text(
        json.dumps({k: str(getattr(a, k)) if k == "models_dir" else getattr(a, k) for k in keys})
    )
    models, data = prepare(a)
    todo = []
    for group in a.groups:  # groups in priority order, all seeds of one group before the next;
        for s in range(a.seeds):  # cells shuffled within a (group, seed, verify) block
            for v in a.verify:
                block = cells([group])
                todo += [(c, v, s) for c in random.Random(1000 * s + v).sample(block, len(block))]
    t0 = time.time()
    for i, (c, v, s) in enumerate(todo):
        if cell_key(c, v, s) in done:
            continue
        if past(a.deadline):
            print(f"deadline {a.deadline} UTC reached: {len(todo) - i} cells not started", flush=True)
            break
        row = run_cell(c, v, s, a, models, data)
        rows.append(row)
        done.add(cell_key(c, v, s))
        tmp = results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        os.replace(tmp, results_path)
        print(
            f"[{i + 1}/{len(todo)} {time.time() - t0:.0f}s] verify={v} seed={s} {c['supervise']} "
            f"{json.dumps(truncate_settings(c))} {c['teacher']}: acc={row['accuracy']:.3f} "
            f"ans={row['answer_rate']:.2f} cpu={row['cpu_time_s']:.1f}s",
            flush=True,
        )


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
