"""The `distill` stage: truncated, segment-selective knowledge distillation.

Reads top to bottom: resolve and load the student and teacher, check they share a vocabulary,
tokenize the data, build (or reuse) the offline teacher cache, train, save the student as a
Hugging Face folder in the stage's workdir, report the compute it took.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from pathlib import Path

import torch

from slm_toolkit.core.accounting import Accountant
from slm_toolkit.data.example import TokenizedExample
from slm_toolkit.distill import onpolicy
from slm_toolkit.distill.batching import cache_sequences, collate, plan_steps, total_steps
from slm_toolkit.distill.config import DistillConfig
from slm_toolkit.distill.masks import segment_weight_table
from slm_toolkit.distill.teacher_cache import cache_folder, fill_cache, open_cache, tokenizer_hash
from slm_toolkit.distill.trainer import (
    LossSettings,
    TrainSettings,
    full_model_state,
    init_distributed,
    shared_vocab,
    tail_mean,
    train,
)
from slm_toolkit.stage import StageInput, StageOutput


def run(cfg: DistillConfig, inp: StageInput) -> StageOutput:
    t_start = time.perf_counter()
    rank, n_proc = init_distributed(inp.device)
    torch.manual_seed(inp.seed)
    task = inp.data.options.get("task", {})

    # -- setup: models, vocabulary, data
    from slm_toolkit.core.artifacts import hash_folder, write_meta
    from slm_toolkit.measures.metrics import count_parameters
    from slm_toolkit.models.load import load_model
    from slm_toolkit.models.resolve import resolve_model

    student_path = resolve_student(cfg.student, inp, task)
    teacher_path = resolve_model(cfg.teacher.model, task=task, seed=inp.seed) if cfg.teacher.model else inp.model
    student, tokenizer = load_model(student_path, device=inp.device, dtype=torch.float32)
    teacher, t_tok = load_model(teacher_path, device=inp.device)
    teacher.requires_grad_(False)
    vocab = shared_vocab(student, tokenizer, teacher, t_tok)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = tokenize(tokenizer, inp.data.train[: cfg.limit] if cfg.limit else inp.data.train)
    weights = segment_weight_table({name: cfg.weight_of(name) for name in cfg.supervise})
    tr = cfg.train
    if tr.batch_size % (n_proc * tr.grad_accum):
        raise ValueError(
            f"train.batch_size ({tr.batch_size}) must be a multiple of grad_accum x processes "
            f"({tr.grad_accum} x {n_proc})"
        )
    cut = dict(fraction=cfg.truncate.fraction, tokens=cfg.truncate.tokens, mode=cfg.truncate.mode)
    n_steps = total_steps(len(examples), tr.batch_size, tr.epochs, tr.max_steps)
    acc = Accountant(count_parameters(student), count_parameters(teacher), device=inp.device)

    # -- offline teacher: top-k cache, built once (rank 0), reused by later stages and runs
    cache = None
    if cfg.teacher.mode == "offline":
        folder = cache_folder(teacher_path, cfg.teacher.top_k, vocab)
        cache = open_cache(folder, hash_folder(teacher_path), tokenizer_hash(tokenizer), cfg.teacher.top_k, vocab)
        if rank == 0:
            acc.teacher_tokens += fill_cache(
                cache, teacher, cache_sequences(examples, **cut), vocab=vocab, pad_id=pad_id, device=inp.device
            )
        if n_proc > 1:
            torch.distributed.barrier()
            cache = open_cache(
                folder, cache.meta["teacher_hash"], cache.meta["tokenizer_hash"], cfg.teacher.top_k, vocab
            )
        if cfg.on_policy.fraction == 0:
            teacher = None  # not needed any more: free its memory before training

    # -- train
    steps = plan_steps(
        examples,
        batch_size=tr.batch_size,
        grad_accum=tr.grad_accum,
        epochs=tr.epochs,
        seed=inp.seed,
        weight_table=weights,
        pad_id=pad_id,
        full_batches=cfg.truncate.full_batches,
        rank=rank,
        world=n_proc,
        max_steps=tr.max_steps,
        **cut,
    )
    settings = TrainSettings(
        total_steps=n_steps,
        lr=tr.lr,
        schedule=tr.schedule,
        warmup=tr.warmup,
        weight_decay=tr.weight_decay,
        clip=tr.clip,
        checkpoint_every=tr.checkpoint_every,
        fingerprint=fingerprint(cfg, inp, student_path),
        loss=LossSettings(cfg.loss.kind, cfg.loss.temperature, cfg.loss.param, cfg.loss.ce_weight, vocab),
    )
    sampler = None
    if cfg.on_policy.fraction > 0:
        sampler = on_policy_sampler(student, tokenizer, examples, cfg, weights, inp.seed, pad_id, rank, n_proc, acc)
    t_train, c_train = time.perf_counter(), time.process_time()
    result = train(
        student,
        steps,
        settings,
        workdir=inp.workdir,
        acc=acc,
        device=inp.device,
        fsdp=tr.fsdp,
        cache=cache,
        teacher=teacher,
        on_policy=sampler,
    )
    train_s, train_cpu_s = time.perf_counter() - t_train, time.process_time() - c_train

    # -- save (rank 0): the student as a Hugging Face folder, which is this stage's artifact
    metrics = sum_over_processes(acc.metrics(), n_proc)
    metrics |= {
        "final_loss": tail_mean(result["history"]),
        "steps": float(len(result["history"])),
        "student_parameters": float(acc.student_params),
        "teacher_parameters": float(acc.teacher_params),
    }
    state = full_model_state(student)  # gathers FSDP shards (every rank takes part)
    if rank == 0:
        student.save_pretrained(inp.workdir, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(inp.workdir)
        shutil.rmtree(inp.workdir / "checkpoints", ignore_errors=True)
        write_meta(
            inp.workdir,
            kind="hf",
            stage="distill",
            parent=str(student_path),
            teacher=str(teacher_path),
            metrics=metrics,
            config=cfg.model_dump(),
        )
    timings = {"train_s": train_s, "train_cpu_s": train_cpu_s, "total_s": time.perf_counter() - t_start}
    return StageOutput(
        artifact=inp.workdir, metrics=metrics, timings=timings, extra={"report_md": report_md(cfg, metrics)}
    )


def resolve_student(spec: str, inp: StageInput, task: dict) -> Path:
    """`previous` = the artifact of the stage before (or the recipe's model for the first stage)."""
    from slm_toolkit.models.resolve import resolve_model

    if spec == "previous":
        if inp.artifact is None:
            raise ValueError("distill.student: `previous` needs an earlier stage that produced a model")
        return Path(inp.artifact)
    return resolve_model(spec, task=task, seed=inp.seed)


def tokenize(tokenizer, examples) -> list[TokenizedExample]:
    from slm_toolkit.data.segments import tokenize_examples

    return tokenize_examples(tokenizer, examples)


def fingerprint(cfg: DistillConfig, inp: StageInput, student_path: Path) -> str:
    """What a checkpoint must match to be resumed: the config, seed, student and data."""
    text = json.dumps(
        [cfg.model_dump(), inp.seed, str(student_path), len(inp.data.train), str(inp.data.train[:3])],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def on_policy_sampler(student, tokenizer, examples, cfg: DistillConfig, weights, seed, pad_id, rank, n_proc, acc):
    """Turn a share `on_policy.fraction` of the steps into student-sampled, teacher-scored steps."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    close = tokenizer.convert_tokens_to_ids("</think>")
    close = close if close != tokenizer.unk_token_id else None
    op = cfg.on_policy

    def sample_step(step):
        if random.Random(seed * 7919 + step.index).random() >= op.fraction:
            return step
        rng = random.Random(seed * 104729 + step.index)
        picked = [examples[rng.randrange(len(examples))] for _ in range(step.examples)]
        lo, hi = round(rank * len(picked) / n_proc), round((rank + 1) * len(picked) / n_proc)
        mine = picked[lo:hi]
        prompts = [onpolicy.prompt_part(ex)[0] for ex in mine]
        conts = (
            onpolicy.sample(
                student,
                prompts,
                max_new_tokens=op.max_new_tokens,
                temperature=op.temperature,
                pad_id=pad_id,
                eos_ids=eos,
                seed=seed * 1_000_003 + step.index * 101 + rank,
            )
            if mine
            else []
        )
        acc.generated_tokens += sum(len(c) for c in conts)
        seqs = onpolicy.generated_sequences(mine, conts, think_close_id=close, table=weights)
        denom = torch.tensor(float(sum(sum(w > 0 for w in s.weights) for s in seqs)))
        if n_proc > 1:
            torch.distributed.all_reduce(denom)
        parts = max(1, len(step.micro))
        micro = [
            collate(seqs[round(i * len(seqs) / parts) : round((i + 1) * len(seqs) / parts)], pad_id)
            for i in range(parts)
        ]
        step.micro, step.denom, step.online, step.empty = micro, int(denom), True, 0
        return step

    return sample_step


def sum_over_processes(metrics: dict[str, float], n_proc: int) -> dict[str, float]:
    """Token and FLOP counts are per process: add them up (times and memory stay per process)."""
    if n_proc == 1:
        return metrics
    keys = [
        k
        for k in ("tokens_student", "tokens_teacher", "tokens_generated", "flops_student", "flops_teacher", "flops")
        if k in metrics
    ]
    t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    out = dict(metrics) | dict(zip(keys, t.tolist()))
    out["tokens_per_s"] = out["tokens_student"] / out["wall_time_s"] if out["wall_time_s"] > 0 else 0.0
    return out


def report_md(cfg: DistillConfig, m: dict[str, float]) -> str:
    cut = (
        f"first {cfg.truncate.fraction:.0%}"
        if cfg.truncate.fraction
        else f"first {cfg.truncate.tokens} tokens"
        if cfg.truncate.tokens
        else "none"
    )
    return "\n".join(
        [
            f"### distill ({cfg.loss.kind}, teacher {cfg.teacher.mode}, supervise {'+'.join(cfg.supervise)})",
            "",
            f"Truncation: {cut} (mode {cfg.truncate.mode}, full batches {cfg.truncate.full_batches:.0%}).",
            "",
            "| steps | final loss | student tokens | supervised tokens | FLOPs | wall time (s) | peak memory (MB) |",
            "|---|---|---|---|---|---|---|",
            f"| {m['steps']:.0f} | {m['final_loss']:.4f} | {m['tokens_student']:.0f} | {m['tokens_supervised']:.0f} "
            f"| {m['flops']:.3g} | {m['wall_time_s']:.1f} | {m['peak_memory_mb']:.0f} |",
        ]
    )
