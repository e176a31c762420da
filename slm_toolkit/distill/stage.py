"""The `distill` stage: truncated, segment-selective knowledge distillation.

Reads top to bottom, in the shape of torchtune's knowledge-distillation recipe:

    setup          join the process group (torchrun), load student and teacher, check that they
                   share a vocabulary, tokenize the data, plan the truncation
    teacher_cache  offline teacher: build (rank 0) or reuse the top-k cache, then free the teacher
    train_student  the planned steps through the trainer (DDP / FSDP under torchrun)
    save           rank 0 writes the student as a Hugging Face folder (the stage's artifact)

Each step takes and returns typed values (`Setup`, `Cut`, `TrainSettings`); nothing is passed
as a splatted dict.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from slm_toolkit.core.accounting import Accountant
from slm_toolkit.core.artifacts import Kind, hash_folder, write_meta
from slm_toolkit.data.example import TokenizedExample
from slm_toolkit.data.segments import THINK_OPEN, prompt_ids, tokenize_examples
from slm_toolkit.distill import onpolicy
from slm_toolkit.distill.batching import cache_sequences, collate, plan_steps, total_steps
from slm_toolkit.distill.config import DistillConfig
from slm_toolkit.distill.masks import segment_weight_table
from slm_toolkit.distill.teacher_cache import TeacherCache, cache_folder, fill_cache, open_cache, tokenizer_hash
from slm_toolkit.distill.trainer import (
    LossSettings,
    TrainSettings,
    full_model_state,
    init_distributed,
    shared_vocab,
    tail_mean,
    train,
)
from slm_toolkit.distill.truncation import Cut
from slm_toolkit.measures.metrics import count_parameters
from slm_toolkit.models.load import load_model
from slm_toolkit.models.resolve import resolve_model
from slm_toolkit.stage import StageInput, StageOutput


@dataclass
class Setup:
    """Everything the later steps need, made once by `setup`."""

    rank: int
    n_proc: int
    seed: int
    student: torch.nn.Module
    tokenizer: object
    teacher: torch.nn.Module | None  # None once an offline cache holds all it is needed for
    student_path: Path
    teacher_path: Path
    vocab: int  # rows of the output layer both models score
    pad_id: int
    examples: list[TokenizedExample]
    weights: dict[int, float]  # segment id -> loss weight
    cut: Cut | None  # None = no truncation (`TruncateConfig.active` is false)
    n_steps: int
    acc: Accountant


def run(cfg: DistillConfig, inp: StageInput, *, after_step=None) -> StageOutput:
    """The stage. `after_step(steps_done, model)`: an optional hook after every optimizer step
    (benchmarks use it for learning curves; the pipeline does not)."""
    t_start = time.perf_counter()
    s = setup(cfg, inp)
    cache = teacher_cache(cfg, s, inp.device)
    history, timings = train_student(cfg, inp, s, cache, after_step)
    metrics = save(cfg, inp, s, history)
    timings["total_s"] = time.perf_counter() - t_start
    return StageOutput(
        artifact=inp.workdir, metrics=metrics, timings=timings, extra={"report_md": report_md(cfg, s.cut, metrics)}
    )


# -- setup --------------------------------------------------------------------------------------
def setup(cfg: DistillConfig, inp: StageInput) -> Setup:
    rank, n_proc = init_distributed(inp.device)
    torch.manual_seed(inp.seed)
    tr = cfg.train
    if tr.batch_size % (n_proc * tr.grad_accum):
        raise ValueError(
            f"train.batch_size ({tr.batch_size}) must be a multiple of grad_accum x processes "
            f"({tr.grad_accum} x {n_proc})"
        )
    task = inp.data.options.get("task", {})
    student_path = resolve_student(cfg.student, inp, task)
    teacher_path = resolve_model(cfg.teacher.model, task=task, seed=inp.seed) if cfg.teacher.model else inp.model
    student, tokenizer = load_model(student_path, device=inp.device, dtype=torch.float32)
    teacher, t_tok = load_model(teacher_path, device=inp.device)
    teacher.requires_grad_(False)
    vocab = shared_vocab(student, tokenizer, teacher, t_tok)
    examples = tokenize_examples(tokenizer, training_examples(cfg, inp))
    return Setup(
        rank=rank,
        n_proc=n_proc,
        seed=inp.seed,
        student=student,
        tokenizer=tokenizer,
        teacher=teacher,
        student_path=student_path,
        teacher_path=Path(teacher_path),
        vocab=vocab,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        examples=examples,
        weights=segment_weight_table({name: cfg.weight_of(name) for name in cfg.supervise}),
        cut=Cut.of(cfg.truncate),
        n_steps=total_steps(len(examples), tr.batch_size, tr.epochs, tr.max_steps),
        acc=Accountant(count_parameters(student), count_parameters(teacher), device=inp.device),
    )


def training_examples(cfg: DistillConfig, inp: StageInput) -> list:
    return inp.data.train[: cfg.limit] if cfg.limit else inp.data.train


def resolve_student(spec: str, inp: StageInput, task: dict) -> Path:
    """`previous` = the artifact of the stage before (or the recipe's model for the first stage)."""
    if spec == "previous":
        if inp.artifact is None:
            raise ValueError("distill.student: `previous` needs an earlier stage that produced a model")
        return Path(inp.artifact)
    return resolve_model(spec, task=task, seed=inp.seed)


# -- offline teacher: top-k cache, built once (rank 0), reused by later stages and runs ---------
def teacher_cache(cfg: DistillConfig, s: Setup, device: str) -> TeacherCache | None:
    if cfg.teacher.mode != "offline":
        return None
    k, tr = cfg.teacher.top_k, cfg.train
    folder = cache_folder(s.teacher_path, k, s.vocab)
    cache = open_cache(folder, hash_folder(s.teacher_path), tokenizer_hash(s.tokenizer), k, s.vocab)
    if s.rank == 0:
        needed = cache_sequences(
            s.examples, s.cut, batch_size=tr.batch_size, epochs=tr.epochs, seed=s.seed, max_steps=tr.max_steps
        )
        s.acc.teacher_tokens += fill_cache(cache, s.teacher, needed, vocab=s.vocab, pad_id=s.pad_id, device=device)
    if s.n_proc > 1:
        torch.distributed.barrier()
        cache = open_cache(folder, cache.meta["teacher_hash"], cache.meta["tokenizer_hash"], k, s.vocab)
    if cfg.on_policy.fraction == 0:
        s.teacher = None  # not needed any more: free its memory before training
    return cache


# -- train ---------------------------------------------------------------------------------------
def train_student(
    cfg: DistillConfig, inp: StageInput, s: Setup, cache: TeacherCache | None, after_step=None
) -> tuple[list[float], dict[str, float]]:
    """The planned steps through the trainer; `after_step(steps_done, model)` as in `trainer.train`."""
    tr = cfg.train
    steps = plan_steps(
        s.examples,
        batch_size=tr.batch_size,
        grad_accum=tr.grad_accum,
        epochs=tr.epochs,
        seed=s.seed,
        weight_table=s.weights,
        pad_id=s.pad_id,
        cut=s.cut,
        rank=s.rank,
        world=s.n_proc,
        max_steps=tr.max_steps,
    )
    settings = TrainSettings(
        total_steps=s.n_steps,
        lr=tr.lr,
        schedule=tr.schedule,
        warmup=tr.warmup,
        weight_decay=tr.weight_decay,
        clip=tr.clip,
        checkpoint_every=tr.checkpoint_every,
        fingerprint=fingerprint(cfg, inp, s.student_path),
        loss=LossSettings(cfg.loss.kind, cfg.loss.temperature, cfg.loss.param, cfg.loss.ce_weight, s.vocab),
    )
    sampler = on_policy_sampler(cfg, s) if cfg.on_policy.fraction > 0 else None
    t_train, c_train = time.perf_counter(), time.process_time()
    result = train(
        s.student,
        steps,
        settings,
        workdir=inp.workdir,
        acc=s.acc,
        device=inp.device,
        fsdp=tr.fsdp,
        cache=cache,
        teacher=s.teacher,
        on_policy=sampler,
        after_step=after_step,
    )
    timings = {"train_s": time.perf_counter() - t_train, "train_cpu_s": time.process_time() - c_train}
    return result["history"], timings


def fingerprint(cfg: DistillConfig, inp: StageInput, student_path: Path) -> str:
    """What a checkpoint must match to be resumed: the config, seed, student and the content of
    every training example."""
    data = hashlib.sha256()
    for ex in training_examples(cfg, inp):
        data.update(json.dumps([ex.prompt, ex.cot, ex.answer]).encode())
    text = json.dumps([cfg.model_dump(), inp.seed, str(student_path), data.hexdigest()], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def on_policy_sampler(cfg: DistillConfig, s: Setup):
    """Turn a share `on_policy.fraction` of the steps into student-sampled, teacher-scored steps."""
    tokenizer, examples, op, seed = s.tokenizer, s.examples, cfg.on_policy, s.seed
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    close = tokenizer.convert_tokens_to_ids("</think>")
    close = close if close != tokenizer.unk_token_id else None

    def sample_step(step):
        if random.Random(seed * 7919 + step.index).random() >= op.fraction:
            return step
        rng = random.Random(seed * 104729 + step.index)
        picked = [examples[rng.randrange(len(examples))] for _ in range(step.examples)]
        lo, hi = round(s.rank * len(picked) / s.n_proc), round((s.rank + 1) * len(picked) / s.n_proc)
        mine = picked[lo:hi]
        prompts = [onpolicy.prompt_part(ex)[0] for ex in mine]
        conts = (
            onpolicy.sample(
                s.student,
                prompts,
                max_new_tokens=op.max_new_tokens,
                temperature=op.temperature,
                pad_id=s.pad_id,
                eos_ids=eos,
                seed=seed * 1_000_003 + step.index * 101 + s.rank,
            )
            if mine
            else []
        )
        s.acc.generated_tokens += sum(len(c) for c in conts)
        seqs = onpolicy.generated_sequences(mine, conts, think_close_id=close, table=s.weights)
        denom = torch.tensor(float(sum(sum(w > 0 for w in q.weights) for q in seqs)))
        if s.n_proc > 1:
            torch.distributed.all_reduce(denom)
        parts = max(1, len(step.micro))
        micro = [
            collate(seqs[round(i * len(seqs) / parts) : round((i + 1) * len(seqs) / parts)], s.pad_id)
            for i in range(parts)
        ]
        step.micro, step.denom, step.online, step.empty = micro, int(denom), True, 0
        return step

    return sample_step


# -- save (rank 0): the student as a Hugging Face folder, which is this stage's artifact ---------
def save(cfg: DistillConfig, inp: StageInput, s: Setup, history: list[float]) -> dict[str, float]:
    metrics = sum_over_processes(s.acc.metrics(), s.n_proc)
    metrics |= {
        "final_loss": tail_mean(history),
        "steps": float(len(history)),
        "student_parameters": float(s.acc.student_params),
        "teacher_parameters": float(s.acc.teacher_params),
    }
    state = full_model_state(s.student)  # gathers FSDP shards (every rank takes part)
    if s.rank == 0:
        s.student.save_pretrained(inp.workdir, state_dict=state, safe_serialization=True)
        s.tokenizer.save_pretrained(inp.workdir)
        shutil.rmtree(inp.workdir / "checkpoints", ignore_errors=True)
        write_meta(
            inp.workdir,
            kind=Kind.HF,
            stage="distill",
            parent=str(s.student_path),
            teacher=str(s.teacher_path),
            metrics=metrics,
            config=cfg.model_dump(),
            reasoning_marker=reasoning_marker(s.tokenizer),
        )
    return metrics


def reasoning_marker(tokenizer) -> str | None:
    """`<think>` when the training layout put it between the prompt and the CoT (the generation
    prompt ends with it), else None: `slm serve` ends its chat prompt the way training did
    (serving/artifact.py reads it from slm_meta.json)."""
    text = tokenizer.decode(prompt_ids(tokenizer, "x"), skip_special_tokens=False)
    return THINK_OPEN if text.rstrip().endswith(THINK_OPEN) else None


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


def report_md(cfg: DistillConfig, cut: Cut | None, m: dict[str, float]) -> str:
    return "\n".join(
        [
            f"### distill ({cfg.loss.kind}, teacher {cfg.teacher.mode}, supervise {'+'.join(cfg.supervise)})",
            "",
            f"Truncation: {cut.describe() if cut is not None else 'none'}.",
            "",
            "| steps | final loss | student tokens | supervised tokens | FLOPs | wall time (s) | peak memory (MB) |",
            "|---|---|---|---|---|---|---|",
            f"| {m['steps']:.0f} | {m['final_loss']:.4f} | {m['tokens_student']:.0f} | {m['tokens_supervised']:.0f} "
            f"| {m['flops']:.3g} | {m['wall_time_s']:.1f} | {m['peak_memory_mb']:.0f} |",
        ]
    )
