"""Structured pruning + KD healing on the demo student: configurations x importance criteria.

    python benchmarks/pruning/run.py              # the recorded run (see README.md for sizes)
    python benchmarks/pruning/run.py --smoke      # a tiny end-to-end check (minutes)
    python benchmarks/pruning/run.py --report-only

Pipeline, all through the project's real stages in this process:
  unpruned student  = builtin:arith-student distilled from builtin:arith-teacher (distill stage,
                      the quickstart's settings)
  for each configuration x importance:
      prune stage     (slm_toolkit.prune.stage.run: reload + ONNX gates, accuracy right after pruning)
      heal            (slm_toolkit.distill.stage.run with student = the pruned folder, same teacher cache)
      accuracy        shared exact_match (greedy, KV cache) on the eval split
  reference row     the unpruned student given the same extra distill epoch ("none")
  latency           batch-1 decode of every healed model and the unpruned student, round-robin
                    (one run each per round, same process), median per model -> speedup

Rows are appended to results.json after each cell, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {  # name -> prune kwargs; "layers" is filled from the student's depth (25%)
    "heads25+mlp50": dict(heads=0.25, mlp=0.5),
    "depth25": dict(depth=0.25),
    "heads25+mlp50+depth25": dict(heads=0.25, mlp=0.5, depth=0.25),
}
CRITERIA = ("magnitude", "taylor", "activation")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, writes under _work/smoke only")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--train", type=int, default=16000, help="training examples (distill, heal, calibration pool)")
    p.add_argument("--eval", type=int, default=300, help="eval examples for exact match")
    p.add_argument("--calib", type=int, default=128, help="calibration samples for the prune stage")
    p.add_argument("--truncate", type=float, default=1.0, help="KD truncation fraction (1 = full sequences)")
    p.add_argument("--distill-epochs", type=int, default=2, help="epochs distilling the unpruned student")
    p.add_argument("--heal-epochs", type=int, default=1)
    p.add_argument("--heal-limit", type=int, default=8000, help="training examples used for healing (default: all)")
    p.add_argument(
        "--long-heal-epochs",
        type=int,
        default=2,
        help="a second, longer healing of every pruned model over all training examples (0: skip)",
    )
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--rounds", type=int, default=15, help="latency rounds (one run per model per round)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--builtin-steps", type=int, default=None, help="override builtin training steps (smoke)")
    p.add_argument("--teacher", type=Path, default=None, help="teacher folder (default: builtin:arith-teacher)")
    p.add_argument("--student", type=Path, default=None, help="base student folder (default: builtin:arith-student)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    if a.smoke:
        a.train, a.eval, a.calib, a.rounds, a.new_tokens, a.distill_epochs = 96, 12, 16, 2, 8, 1
        a.builtin_steps = a.builtin_steps or 30
    a.out = a.out or (HERE / "_work" / "smoke" if a.smoke else HERE)
    a.work = HERE / "_work" / "run" if a.out == HERE else a.out / "_work"
    return a


def distill_config(student: Path, epochs: int, limit: int | None, lr: float, fraction: float):
    from slm_toolkit.distill.config import DistillConfig

    truncate = {} if fraction >= 1 else {"fraction": fraction, "mode": "head", "full_batches": 0.15}
    return DistillConfig.model_validate(
        {  # the quickstart's distill settings but truncation, epochs, limit
            "student": str(student),
            "supervise": ["cot", "answer"],
            "truncate": truncate,
            "loss": {"kind": "forward_kl", "temperature": 1.0},
            "teacher": {"mode": "offline", "top_k": 16},
            "train": {"epochs": epochs, "batch_size": 32, "lr": lr, "checkpoint_every": 10**9},
            "limit": limit,
        }
    )


def stage_input(artifact: Path, teacher: Path, data, workdir: Path):
    from slm_toolkit.stage import StageInput

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    return StageInput(
        artifact=artifact, model=teacher, data=data, workdir=workdir, run_dir=workdir.parent, device="cpu", seed=0
    )


def distill(student: Path, teacher: Path, data, workdir: Path, a, heal: bool = True) -> Path:
    from slm_toolkit.distill.stage import run

    cfg = (
        distill_config(student, a.heal_epochs, a.heal_limit, a.lr, a.truncate)
        if heal
        else distill_config(student, a.distill_epochs, None, a.lr, a.truncate)
    )
    if not (workdir / "slm_meta.json").is_file():
        run(cfg, stage_input(student, teacher, data, workdir))
    return workdir


def accuracy(folder: Path, data) -> float:
    from slm_toolkit.measures.metrics import exact_match, generation_budget
    from slm_toolkit.models.load import load_tokenizer
    from slm_toolkit.runtime.torch import TorchGenerator

    tok = load_tokenizer(folder)
    gen = TorchGenerator.from_folder(folder)
    return exact_match(gen, tok, data.eval, generation_budget(tok, data.eval), batch_size=64)["accuracy"]


def setup(a):
    from slm_toolkit.data.loaders import load_data
    from slm_toolkit.demo.builtin import builtin_model

    task: dict = {}
    data = load_data("builtin:arith-cot", "auto", a.train, a.eval, seed=0, task=task)
    teacher = a.teacher or builtin_model("arith-teacher", task=task, steps=a.builtin_steps)
    base = a.student or builtin_model("arith-student", task=task, steps=a.builtin_steps)
    return data, teacher, base


def prune_cell(name: str, criterion: str, unpruned: Path, teacher: Path, data, a) -> dict:
    from transformers import AutoConfig

    from slm_toolkit.prune.config import PruneConfig
    from slm_toolkit.prune.stage import run as prune

    kw = dict(CONFIGS[name])
    depth = kw.pop("depth", 0)
    if depth:
        kw["layers"] = max(1, round(depth * AutoConfig.from_pretrained(unpruned).num_hidden_layers))
    cfg = PruneConfig(**kw, importance=criterion, calibration={"samples": a.calib, "batch_size": 16})
    cell = a.work / f"{name}-{criterion}"
    t0 = time.perf_counter()
    out = prune(cfg, stage_input(unpruned, teacher, data, cell / "prune"))
    prune_s = time.perf_counter() - t0
    healed = distill(out.artifact, teacher, data, cell / "heal", a)
    m = out.metrics
    return {
        "config": name,
        "importance": criterion,
        "prune": cfg.model_dump(),
        "accuracy_pruned": m["accuracy"],
        "accuracy_healed": accuracy(healed, data),
        "params": int(m["params"]),
        "params_unpruned": int(m["input_params"]),
        "bytes": int(m["bytes"]),
        "layers": int(m["num_hidden_layers"]),
        "heads": int(m["num_attention_heads"]),
        "kv_heads": int(m["num_key_value_heads"]),
        "intermediate_size": int(m["intermediate_size"]),
        "stage_speedup": m["speedup"],
        "reload_max_abs_logit_diff": m["reload_max_abs_logit_diff"],
        "onnx_token_agreement": m["onnx_token_agreement"],
        "prune_stage_s": prune_s,
        "folder": str(healed.relative_to(HERE) if healed.is_relative_to(HERE) else healed),
    }


def long_heal(cell: Path, teacher: Path, data, a) -> dict:
    """Heal the cell's pruned model again with the long budget. A run whose loss went NaN (the distill
    stage saves such weights without failing) is retried once at half the learning rate, and both
    are recorded."""
    import math

    from slm_toolkit.core.artifacts import read_meta
    from slm_toolkit.distill.stage import run as distill_run

    out: dict = {}
    for attempt, lr in enumerate((a.lr, a.lr / 2)):
        folder = cell / ("heal-long" if attempt == 0 else "heal-long-retry")
        if not (folder / "slm_meta.json").is_file():
            cfg = distill_config(cell / "prune", a.long_heal_epochs, None, lr, a.truncate)
            distill_run(cfg, stage_input(cell / "prune", teacher, data, folder))
        loss = read_meta(folder)["metrics"]["final_loss"]
        out |= {"long_heal_lr": lr, "long_heal_final_loss": loss}
        if math.isfinite(loss):
            break
        out["long_heal_diverged_at_lr"] = lr
    out["accuracy_healed_long"] = accuracy(folder, data)
    return out


def latency(folders: dict[str, Path], prompt: list[int], a) -> dict[str, dict]:
    """Round-robin batch-1 decode latency (shared decode_latency, one repeat per model per round)."""
    from slm_toolkit.measures.metrics import decode_latency
    from slm_toolkit.runtime.torch import TorchGenerator

    gens = {k: TorchGenerator.from_folder(f) for k, f in folders.items()}
    times: dict[str, list[float]] = {k: [] for k in gens}
    for r in range(a.rounds):
        for k, g in gens.items():
            times[k].append(
                decode_latency(g, prompt, a.new_tokens, repeats=1, warmup=1 if r == 0 else 0)["latency_ms_median"]
            )
    return {k: {"ms_median": statistics.median(v), "ms_iqr": _iqr(v), "ms_min": min(v)} for k, v in times.items()}


def _builtin_meta(folder: Path) -> dict:
    from slm_toolkit.core.artifacts import read_meta

    meta = read_meta(folder)
    return {"builtin": meta.get("builtin"), "metrics": meta.get("metrics")}


def _iqr(v: list[float]) -> float:
    if len(v) < 2:
        return 0.0
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[2] - q[0]


def main() -> None:
    a = parse()
    import torch

    torch.set_num_threads(a.threads)
    if a.report_only:
        from report import write_report  # benchmarks/pruning/report.py

        write_report(json.loads((a.out / "results.json").read_text()), a.out)
        return
    a.work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    data, teacher, base = setup(a)
    unpruned = distill(base, teacher, data, a.work / "unpruned", a, heal=False)
    state_path = a.work / "rows.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    state.setdefault("started_utc", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()))
    if "unpruned" not in state:
        state["unpruned"] = {"accuracy": accuracy(unpruned, data)}
        extra = distill(unpruned, teacher, data, a.work / "unpruned-extra-epoch", a)
        state["reference"] = {"accuracy_healed": accuracy(extra, data), "folder": str(extra)}
        state_path.write_text(json.dumps(state, indent=1))
    print(
        f"[{time.strftime('%H:%M:%S')}] unpruned accuracy {state['unpruned']['accuracy']:.3f}, "
        f"after one more epoch {state['reference']['accuracy_healed']:.3f}",
        flush=True,
    )
    for name in CONFIGS:
        for criterion in CRITERIA:
            key = f"{name}/{criterion}"
            if key in state:
                continue
            state[key] = prune_cell(name, criterion, unpruned, teacher, data, a)
            state_path.write_text(json.dumps(state, indent=1))
            print(
                f"[{time.strftime('%H:%M:%S')}] {key}: pruned {state[key]['accuracy_pruned']:.3f} "
                f"healed {state[key]['accuracy_healed']:.3f}",
                flush=True,
            )
    for key, row in state.items():  # the longer healing budget (the unpruned student's own: all data)
        if "/" not in key or not a.long_heal_epochs or "long_heal_lr" in row:
            continue
        cell = a.work / key.replace("/", "-")
        row |= long_heal(cell, teacher, data, a)
        state_path.write_text(json.dumps(state, indent=1))
        print(
            f"[{time.strftime('%H:%M:%S')}] {key}: long heal {row['accuracy_healed_long']:.3f} "
            f"(lr {row['long_heal_lr']:g})",
            flush=True,
        )
    from slm_toolkit.data.segments import prompt_ids
    from slm_toolkit.models.load import load_tokenizer

    folders = {"unpruned": unpruned} | {
        k: HERE / v["folder"] if not Path(v["folder"]).is_absolute() else Path(v["folder"])
        for k, v in state.items()
        if "/" in k
    }
    prompt = prompt_ids(load_tokenizer(unpruned), data.eval[0].prompt)
    lat = latency(folders, prompt, a)
    results = assemble(state, lat, a, time.time() - t_start, teacher, base)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    sys.path.insert(0, str(HERE))
    from report import write_report

    write_report(results, a.out)
    print(f"wrote {a.out / 'results.json'} and results.md")


def assemble(state: dict, lat: dict, a, wall_s: float, teacher: Path, base: Path) -> dict:
    base_acc = state["unpruned"]["accuracy"]
    base_ms = lat["unpruned"]["ms_median"]
    rows = []
    for key, r in state.items():
        if "/" not in key:
            continue
        row = dict(r)
        row["retention"] = r["accuracy_healed"] / base_acc if base_acc else 0.0
        row["retention_pruned"] = r["accuracy_pruned"] / base_acc if base_acc else 0.0
        if "accuracy_healed_long" in r:
            row["retention_long"] = r["accuracy_healed_long"] / base_acc if base_acc else 0.0
        row["latency_ms"] = lat[key]["ms_median"]
        row["latency_iqr_ms"] = lat[key]["ms_iqr"]
        row["speedup"] = base_ms / lat[key]["ms_median"]
        row["latency_min_ms"] = lat[key]["ms_min"]
        # on a shared CPU other jobs only ever add time: the ratio of the fastest runs is the steadier figure
        row["speedup_min"] = lat["unpruned"]["ms_min"] / lat[key]["ms_min"]
        rows.append(row)
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "unpruned": {
            "accuracy": base_acc,
            "latency_ms": base_ms,
            "latency_iqr_ms": lat["unpruned"]["ms_iqr"],
            "latency_min_ms": lat["unpruned"]["ms_min"],
            "params": rows[0]["params_unpruned"] if rows else None,
        },
        "reference_extra_epoch": {
            "accuracy": state["reference"]["accuracy_healed"],
            "retention": state["reference"]["accuracy_healed"] / base_acc if base_acc else 0.0,
        },
        "rows": rows,
        "conditions": {
            "smoke": a.smoke,
            "train": a.train,
            "eval": a.eval,
            "calibration_samples": a.calib,
            "heal_epochs": a.heal_epochs,
            "heal_limit": a.heal_limit,
            "distill_epochs": a.distill_epochs,
            "long_heal_epochs": a.long_heal_epochs,
            "truncate": a.truncate,
            "lr": a.lr,
            "latency_rounds": a.rounds,
            "latency_new_tokens": a.new_tokens,
            "torch_threads": a.threads,
            "builtin_steps": a.builtin_steps,
            "teacher": str(teacher),
            "student_base": str(base),
            "teacher_meta": _builtin_meta(teacher),
            "student_base_meta": _builtin_meta(base),
            "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "loadavg_at_end": list(load),
            "wall_s": wall_s,
            "started_utc": state.get("started_utc"),
            "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        },
    }


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
