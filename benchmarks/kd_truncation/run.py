"""Truncated, segment-selective KD on the demo task: the paper's grid, our protocol, teacher modes.

    python benchmarks/kd_truncation/run.py                 # everything (see README.md for sizes)
    python benchmarks/kd_truncation/run.py --quick         # a tiny smoke run
    python benchmarks/kd_truncation/run.py --report-only   # rebuild results.md and the plot

Every cell runs the real `distill` stage (slm_toolkit.distill.stage.run) in this process and
evaluates the student with the shared `exact_match` (greedy decoding, KV cache). Cells are run
in a shuffled order within each (seed, verify) block so that load changes on a shared machine
fall on all of them alike; ratios are taken within this one run. Rows are appended to
results.json after every cell, so an interrupted run continues where it stopped.
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
FRACTIONS = [0.25, 0.5, 0.75, 1.0]


def cells(groups: list[str]) -> list[dict]:
    """Every configuration to run once per (verify, seed). `core` = the paper's grid for P+CoT+A
    (the baseline and the plain protocol), `grid` = the other supervision choices."""
    out = []
    if "core" in groups:
        out += [
            dict(supervise="P+CoT+A", fraction=f, mode="head", full_batches=0.0, teacher="offline") for f in FRACTIONS
        ]
    if "grid" in groups:  # the paper's protocol: head truncation, the other supervision choices
        out += [
            dict(supervise=s, fraction=f, mode="head", full_batches=0.0, teacher="offline")
            for s in SUPERVISE
            for f in FRACTIONS
            if s != "P+CoT+A"
        ]
    if "protocol" in groups:  # ours: a share of whole batches left untruncated; keep_answer
        out += [
            dict(supervise="P+CoT+A", fraction=f, mode="head", full_batches=fb, teacher="offline")
            for f in (0.25, 0.5)
            for fb in (0.1, 0.15, 0.25)
        ]
        out += [
            dict(supervise="P+CoT+A", fraction=f, mode="keep_answer", full_batches=0.0, teacher="offline")
            for f in (0.25, 0.5)
        ]
    if "teacher" in groups:  # online teacher at the settings of two offline grid cells
        out += [
            dict(supervise="P+CoT+A", fraction=f, mode="head", full_batches=0.0, teacher="online") for f in (0.5, 1.0)
        ]
    return out


def cell_key(c: dict, verify: int, seed: int) -> str:
    return json.dumps([c["supervise"], c["fraction"], c["mode"], c["full_batches"], c["teacher"], verify, seed])


def distill_config(c: dict, a: argparse.Namespace, student: Path):
    from slm_toolkit.distill.config import DistillConfig

    truncate = (
        {}
        if c["fraction"] >= 1.0
        else {"fraction": c["fraction"], "mode": c["mode"], "full_batches": c["full_batches"]}
    )
    return DistillConfig.model_validate(
        {
            "student": str(student),
            "supervise": SUPERVISE[c["supervise"]],
            "truncate": truncate,
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


def run_cell(c: dict, verify: int, seed: int, a, models: dict, data: dict) -> dict:
    from slm_toolkit.distill.stage import run
    from slm_toolkit.measures.metrics import exact_match, generation_budget
    from slm_toolkit.models.load import load_model
    from slm_toolkit.runtime.torch import TorchGenerator
    from slm_toolkit.stage import StageInput

    teacher, student = models[verify]
    bundle = data[verify, seed]
    with tempfile.TemporaryDirectory(prefix="kd_cell_") as tmp:
        workdir = Path(tmp) / "01-distill.tmp"
        workdir.mkdir()
        inp = StageInput(
            artifact=student, model=teacher, data=bundle, workdir=workdir, run_dir=Path(tmp), device="cpu", seed=seed
        )
        out = run(distill_config(c, a, student), inp)
        model, tok = load_model(workdir)
        gen = TorchGenerator(model, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        q = exact_match(gen, tok, bundle.eval, generation_budget(tok, bundle.eval), batch_size=64)
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
        examples_without_supervision=m["examples_without_supervision"],
    )


def prepare(a) -> tuple[dict, dict]:
    """Teacher and base student per verify (builtin recipes, cached), and the data."""
    from slm_toolkit.data.example import DataBundle
    from slm_toolkit.demo.builtin import builtin_model
    from slm_toolkit.demo.task import generate_examples

    models, data = {}, {}
    for v in a.verify:
        task = {"steps": a.task_steps, "digits": 1, "ops": "+-", "verify": v}
        if a.models_dir:  # fixed folders (the builtin recipes may change while a benchmark runs)
            teacher, student = a.models_dir / f"teacher-v{v}", a.models_dir / f"student-v{v}"
        else:
            teacher = builtin_model("arith-teacher", task=task, steps=a.teacher_steps)
            student = builtin_model("arith-student", task=task, steps=a.student_steps)
        models[v] = (teacher, student)
        evals = generate_examples(a.n_eval, seed=22, **task)  # the same held-out problems for every cell
        for s in range(a.seeds):  # each seed distills on its own training problems
            train = generate_examples(a.steps * a.batch_size, seed=11 + 1000 * s, **task)
            data[v, s] = DataBundle(train=train, eval=evals, source="builtin:arith-cot", options={"task": task})
    return models, data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--groups",
        nargs="+",
        default=["core", "protocol", "teacher", "grid"],
        help="run in this order (each group for all seeds): core protocol teacher grid",
    )
    p.add_argument("--deadline", default=None, help="UTC HH:MM after which no new cell starts")
    p.add_argument("--results", default="results.json", help="file name in --out (parallel runs: one each)")
    p.add_argument("--verify", nargs="+", type=int, default=[0, 1])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per cell")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--n-eval", type=int, default=200)
    p.add_argument("--task-steps", type=int, default=4)
    p.add_argument("--teacher-steps", type=int, default=600)
    p.add_argument("--student-steps", type=int, default=None)
    p.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="folder with teacher-v<verify>/ and student-v<verify>/ (else builtin recipes)",
    )
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--quick", action="store_true", help="tiny smoke run into a temporary folder")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.steps, a.n_eval, a.seeds, a.teacher_steps, a.student_steps = 4, 16, 1, 10, 10
        a.out = Path(tempfile.mkdtemp(prefix="kd_quick_"))
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # RSS must follow freed tensors (accounting.py)
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not a.report_only:
        run_all(a, a.out / a.results)
    from report import write_report

    write_report(merge_results(a.out), a.out, vars(a))
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
        tmp = results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        os.replace(tmp, results_path)
        print(
            f"[{i + 1}/{len(todo)} {time.time() - t0:.0f}s] verify={v} seed={s} {c['supervise']} "
            f"f={c['fraction']} {c['mode']} fb={c['full_batches']} {c['teacher']}: acc={row['accuracy']:.3f} "
            f"ans={row['answer_rate']:.2f} t={row['wall_time_s']:.1f}s",
            flush=True,
        )


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
