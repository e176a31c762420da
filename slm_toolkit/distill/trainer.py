"""The distillation loop: setup, steps, checkpoints; data-parallel under torchrun.

One process or N under `torchrun --nproc_per_node N` (gloo on CPU, NCCL on CUDA). Every process
plans the same steps (batching.py) and takes its share of each global batch; the student is
wrapped in torch's DistributedDataParallel (or sharded with FSDP2's `fully_shard` when asked),
and the loss is scaled by the world size because DDP averages gradients while our loss is
already normalized by the *global* number of supervised tokens.

Checkpoints (`<workdir>/checkpoints/last/`, written atomically every `checkpoint_every` steps)
hold the student's weights and the optimizer's tensors in safetensors and every scalar in JSON
(no pickle); a run started again on the same workdir resumes from there. The plan and the
on-policy sampling are functions of (seed, step), so a resumed run does exactly the steps the
uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from slm_toolkit.core.accounting import Accountant
from slm_toolkit.distill.batching import MicroBatch, Step, collate
from slm_toolkit.distill.losses import OnlineTargets, TopKTargets, distill_loss


class VocabularyMismatch(ValueError):
    """Teacher and student do not share a tokenizer."""


def shared_vocab(student, s_tok, teacher, t_tok) -> int:
    """The vocabulary both models score: equal tokenizers required; rows beyond the tokenizer
    (padding of the embedding matrix) may differ and are sliced off. Raises before training."""
    s_vocab, t_vocab = s_tok.get_vocab(), t_tok.get_vocab()
    if s_vocab != t_vocab:
        only_s = sorted(set(s_vocab.items()) - set(t_vocab.items()))[:3]
        only_t = sorted(set(t_vocab.items()) - set(s_vocab.items()))[:3]
        raise VocabularyMismatch(
            f"teacher and student use different tokenizers ({len(t_vocab)} vs {len(s_vocab)} tokens; "
            f"e.g. student has {only_s}, teacher has {only_t}); token-level distillation needs the "
            "same tokenizer: pick a student from the teacher's family"
        )
    rows = min(student.get_output_embeddings().weight.shape[0], teacher.get_output_embeddings().weight.shape[0])
    needed = max(s_vocab.values()) + 1
    if rows < needed:
        raise VocabularyMismatch(f"a model has {rows} output rows but the tokenizer has {needed} ids")
    return rows


@dataclass
class LossSettings:
    kind: str = "forward_kl"
    temperature: float = 1.0
    param: float = 0.5
    ce_weight: float = 0.0
    vocab: int | None = None
    chunk_size: int = 512


@dataclass
class TrainSettings:
    total_steps: int
    lr: float = 3e-4
    schedule: str = "cosine"
    warmup: float = 0.05
    weight_decay: float = 0.0
    clip: float | None = 1.0
    checkpoint_every: int = 200
    fingerprint: str = ""  # identifies the config; a checkpoint of another config is ignored
    progress: bool = True
    loss: LossSettings = field(default_factory=LossSettings)


# -- the student's loss as one module forward (what DDP / FSDP wrap) ---------------------------
class StudentLoss(torch.nn.Module):
    def __init__(self, model, loss: LossSettings):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, input_ids, attention_mask, flat_positions, targets, labels, weights, denom):
        base = getattr(self.model, self.model.base_model_prefix)
        h = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        h = h.reshape(-1, h.shape[-1]).index_select(0, flat_positions)
        ls = self.loss
        return distill_loss(
            h,
            self.model.get_output_embeddings(),
            targets,
            labels,
            weights,
            denom,
            kind=ls.kind,
            temperature=ls.temperature,
            param=ls.param,
            ce_weight=ls.ce_weight,
            vocab=ls.vocab,
            chunk_size=ls.chunk_size,
        )


def teacher_targets(teacher, mb: MicroBatch, device) -> OnlineTargets:
    """Online teacher: hidden states at the supervised positions (logits are made per chunk)."""
    with torch.no_grad():
        base = getattr(teacher, teacher.base_model_prefix)
        h = base(input_ids=mb.input_ids.to(device), attention_mask=mb.attention_mask.to(device)).last_hidden_state
        h = h.reshape(-1, h.shape[-1]).index_select(0, mb.flat_positions.to(device))
    return OnlineTargets(h, teacher.get_output_embeddings())


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> tuple[int, int]:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return world()


def wrap(model: torch.nn.Module, loss: LossSettings, fsdp: bool, device: str) -> torch.nn.Module:
    module = StudentLoss(model, loss)
    _, n = world()
    if n == 1:
        return module
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in getattr(getattr(model, model.base_model_prefix), "layers", []):
            fully_shard(layer)
        return fully_shard(module)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        module, device_ids=[torch.device(device).index] if device.startswith("cuda") else None
    )


# -- checkpoints: safetensors for tensors, JSON for the rest ----------------------------------
def _state_dicts(model, opt):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_model_state(model) -> dict:
    """The whole model's state dict on rank 0 (a collective under FSDP: call on every rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_checkpoint(folder: Path, model, opt, extra: dict) -> None:
    msd, osd = _state_dicts(model, opt)
    rank, _ = world()
    if rank != 0:
        return
    tensors, scalars = {}, {}
    for fqn, state in osd["state"].items():
        for name, v in state.items():
            if torch.is_tensor(v):
                tensors[f"{fqn}::{name}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{fqn}::{name}"] = v
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_unshared(msd), str(tmp / "model.safetensors"))
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "trainer.json").write_text(
        json.dumps(extra | {"optimizer_scalars": scalars, "param_groups": osd["param_groups"]}, default=float)
    )
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _unshared(state: dict) -> dict:
    """Contiguous tensors, each in its own memory: safetensors refuses tensors that share it (tied
    embeddings: lm_head.weight is embed_tokens.weight), so a repeated one is stored as a copy."""
    out, seen = {}, set()
    for key, value in state.items():
        value = value.contiguous()
        out[key] = value.clone() if value.data_ptr() in seen else value
        seen.add(value.data_ptr())
    return out


def load_checkpoint(folder: Path, model, opt) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    info = json.loads((folder / "trainer.json").read_text())
    msd = load_file(str(folder / "model.safetensors"))
    state: dict[str, dict] = {}
    for key, v in load_file(str(folder / "optimizer.safetensors")).items():
        fqn, name = key.split("::")
        state.setdefault(fqn, {})[name] = v
    for key, v in info["optimizer_scalars"].items():
        fqn, name = key.split("::")
        state.setdefault(fqn, {})[name] = v
    osd = {"state": state, "param_groups": info["param_groups"]}
    set_state_dict(
        model, opt, model_state_dict=msd, optim_state_dict=osd, options=StateDictOptions(full_state_dict=True)
    )
    return info


def find_checkpoint(workdir: Path, fingerprint: str) -> Path | None:
    """The last complete checkpoint of this config (`last.old` if a crash hit the swap)."""
    for name in ("last", "last.old"):
        folder = workdir / "checkpoints" / name
        if (folder / "trainer.json").exists():
            info = json.loads((folder / "trainer.json").read_text())
            return folder if info.get("fingerprint") == fingerprint else None
    return None


# -- the loop -----------------------------------------------------------------------------
def lr_factor(schedule: str, total: int, warmup: float) -> Callable[[int], float]:
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(schedule, schedule)
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_scheduler(name, dummy, num_warmup_steps=int(warmup * total), num_training_steps=total)
    return sched.lr_lambdas[0]


def train(
    model,
    steps: Iterator[Step],
    s: TrainSettings,
    *,
    workdir: Path,
    acc: Accountant,
    device: str = "cpu",
    fsdp: bool = False,
    cache=None,
    teacher=None,
    on_policy: Callable[[Step], Step] | None = None,
    after_step: Callable[[int, torch.nn.Module], None] | None = None,
) -> dict:
    """Run the steps (resuming from a checkpoint in workdir when one exists); returns the history.
    `after_step(steps_done, model)`, when given, is called after every optimizer step (e.g. to
    evaluate a learning curve); it must leave the model as it found it."""
    rank, n_proc = world()
    module = wrap(model, s.loss, fsdp, device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": other, "weight_decay": 0.0}], lr=s.lr
    )
    factor = lr_factor(s.schedule, s.total_steps, s.warmup)
    history: list[float] = []
    start = 0
    ckpt = find_checkpoint(workdir, s.fingerprint)
    if ckpt is not None:
        info = load_checkpoint(ckpt, model, opt)
        start, history = info["step"], info["history"]
        acc.restore(info["accounting"])
    from tqdm.auto import tqdm

    bar = tqdm(total=s.total_steps, initial=start, desc="distill", disable=not s.progress or rank != 0)
    model.train()
    for step in steps:
        if step.index < start:
            continue
        if on_policy is not None:
            step = on_policy(step)
        for g in opt.param_groups:
            g["lr"] = s.lr * factor(step.index)
        loss = _one_step(module, step, opt, s, acc, device, cache, teacher, n_proc)
        history.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        done = step.index + 1
        if after_step is not None:
            after_step(done, model)
            model.train()
        if done % s.checkpoint_every == 0 and done < s.total_steps:
            save_checkpoint(
                workdir / "checkpoints" / "last",
                model,
                opt,
                {"step": done, "history": history, "accounting": acc.state(), "fingerprint": s.fingerprint},
            )
            if n_proc > 1:
                dist.barrier()
    bar.close()
    return {"history": history}


def _one_step(module, step: Step, opt, s: TrainSettings, acc: Accountant, device, cache, teacher, n_proc) -> float:
    micro = step.micro or [collate([], 0)]
    total = torch.zeros((), device=device)
    for i, mb in enumerate(micro):
        sync = i == len(micro) - 1 or not hasattr(module, "no_sync")
        with contextlib.nullcontext() if sync else module.no_sync():
            acc.begin()
            with _autocast(device):
                targets = (
                    cache.targets(mb.cache_keys, mb.rows, mb.cols)
                    if cache is not None and not step_online(step)
                    else teacher_targets(teacher, mb, device)
                )
                if isinstance(targets, TopKTargets):
                    targets = targets.to(device)
                loss = module(
                    mb.input_ids.to(device),
                    mb.attention_mask.to(device),
                    mb.flat_positions.to(device),
                    targets,
                    mb.labels.to(device),
                    mb.weights.to(device),
                    float(max(step.denom, 1)),
                )
            acc.sample()
            (loss * n_proc).backward()
            acc.sample()
        total += loss.detach()
        acc.student_tokens += mb.tokens
        acc.student_train_tokens += mb.tokens
        if cache is None or step_online(step):
            acc.teacher_tokens += mb.tokens
    if n_proc > 1:
        dist.all_reduce(total)
    if not torch.isfinite(total):  # fail loudly before a NaN reaches the weights (and the artifact)
        raise FloatingPointError(
            f"distill: the loss is {float(total)} at step {step.index + 1}; lower train.lr or check the "
            "teacher and data (the last checkpoint is kept for a resume)"
        )
    if s.clip is not None:
        torch.nn.utils.clip_grad_norm_(module.parameters(), s.clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if n_proc == 1 or world()[0] == 0:
        acc.supervised_tokens += step.denom
        acc.examples += step.examples
        acc.empty_examples += step.empty
    return float(total)


def step_online(step: Step) -> bool:
    """On-policy steps are scored by the live teacher even when the run uses a cache."""
    return step.online


def _autocast(device: str):
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def tail_mean(history: list[float], share: float = 0.1) -> float:
    if not history:
        return float("nan")
    k = max(1, math.ceil(len(history) * share))
    return float(sum(history[-k:]) / k)
