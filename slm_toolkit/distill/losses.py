"""Distillation losses, in log space, chunked over tokens.

Every kind compares the teacher distribution p and the student distribution q, both softened
by the temperature T, and is multiplied by T^2 (Hinton et al.) so that gradient magnitudes do
not change with T:

    forward_kl   KL(p || q)
    reverse_kl   KL(q || p)
    jsd (beta)   beta * KL(p || m) + (1 - beta) * KL(q || m),   m = beta * p + (1 - beta) * q
    tvd          1/2 * sum |p - q|
    skl (alpha)  KL(p || alpha * p + (1 - alpha) * q)            (skew KL, DistiLLM)
    srkl (alpha) KL(q || alpha * q + (1 - alpha) * p)            (skew reverse KL, DistiLLM)

The per-token loss is `(1 - ce_weight) * KD + ce_weight * CE(label)` (CE at T = 1), weighted by
the token's segment weight, summed, and divided by `denom`: the number of supervised tokens in
the *global* batch (all micro-batches of the optimizer step, on all processes), so that the
gradient does not depend on grad_accum or the number of processes.

Offline teachers give only their top-k log-probabilities. We use the **tail-bucketed**
distribution: k + 1 outcomes, the teacher's top-k tokens plus one bucket for all the rest, for
both teacher and student. Unlike renormalizing over the top k, the student is penalized for
mass it puts outside the teacher's top k, and every kind stays finite. Both tail buckets are
computed as a log-sum-exp over the tokens *outside* the top k (the teacher's once, when the
cache is filled; the student's from its logits at every step), never as log(1 - sum of the
top k): with a peaked distribution that difference is fp32 rounding noise, which dividing by
T > 1 would turn into probability mass. The temperature is applied to the k + 1 bucket
log-probabilities of both sides; at T = 1 this is exactly the divergence between the two
distributions coarsened to the buckets.

Memory: the student's logits are computed from its hidden states a chunk of tokens at a time,
inside activation checkpointing, so the full-vocabulary fp32 logits of a whole batch never
exist at once (forward or backward); only hidden states of supervised tokens are kept.

Written by hand: no library offers these divergences over top-k caches with chunking (TRL's
GKD computes them on full logits of the whole batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

KINDS = ("forward_kl", "reverse_kl", "jsd", "tvd", "skl", "srkl")
_LOG_FLOOR = -1e4  # exp() of this is 0 in fp32: keeps 0 * log 0 terms at 0 instead of NaN


def divergence(kind: str, logp: torch.Tensor, logq: torch.Tensor, param: float = 0.5) -> torch.Tensor:
    """Per-row divergence between teacher log-probs `logp` and student log-probs `logq` (same
    support, last dim). `param` is jsd's beta or skl/srkl's alpha."""
    logp = logp.clamp_min(_LOG_FLOOR)
    logq = logq.clamp_min(_LOG_FLOOR)
    p, q = logp.exp(), logq.exp()
    if kind == "forward_kl":
        return (p * (logp - logq)).sum(-1)
    if kind == "reverse_kl":
        return (q * (logq - logp)).sum(-1)
    if kind == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if kind == "jsd":
        logm = torch.logaddexp(logp + math.log(param), logq + math.log1p(-param))
        return param * (p * (logp - logm)).sum(-1) + (1 - param) * (q * (logq - logm)).sum(-1)
    if kind == "skl":
        logm = torch.logaddexp(logp + math.log(param), logq + math.log1p(-param))
        return (p * (logp - logm)).sum(-1)
    if kind == "srkl":
        logm = torch.logaddexp(logq + math.log(param), logp + math.log1p(-param))
        return (q * (logq - logm)).sum(-1)
    raise ValueError(f"unknown loss kind {kind!r}: expected one of {', '.join(KINDS)}")


def bucket_logprobs(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Logits [n, V] -> tail-bucketed log-probs [n, k + 1] over the tokens `idx` [n, k]: the k
    log-probs, then the log of the mass of every other token (a log-sum-exp over the logits
    outside `idx`, exact even when that mass is far below fp32's resolution of 1)."""
    log_z = torch.logsumexp(logits, -1, keepdim=True)
    top = logits.gather(-1, idx) - log_z
    if idx.shape[-1] >= logits.shape[-1]:  # the top k is the whole vocabulary: an empty tail
        return torch.cat([top, top.new_full((top.shape[0], 1), _LOG_FLOOR)], -1)
    rest = logits.scatter(-1, idx, float("-inf"))  # at least one finite entry left per row
    return torch.cat([top, torch.logsumexp(rest, -1, keepdim=True) - log_z], -1)


def teacher_topk(logprobs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full teacher log-probs [n, V] -> (top-k log-probs [n, k], their ids [n, k], the log of the
    tail mass [n]); what the offline cache stores for every position."""
    top, idx = logprobs.topk(min(k, logprobs.shape[-1]), -1)
    return top, idx, bucket_logprobs(logprobs, idx)[:, -1]


@dataclass
class TopKTargets:
    """Offline teacher targets for n tokens: top-k log-probs (at T = 1), their token ids and the
    log of the mass outside the top k."""

    logprobs: torch.Tensor  # [n, k] float
    indices: torch.Tensor  # [n, k] long
    tail: torch.Tensor  # [n] float

    def to(self, device) -> TopKTargets:
        return TopKTargets(self.logprobs.to(device), self.indices.to(device), self.tail.to(device))


@dataclass
class OnlineTargets:
    """Online teacher targets for n tokens: its hidden states and its output head."""

    hidden: torch.Tensor  # [n, H_teacher], no grad
    head: Callable[[torch.Tensor], torch.Tensor]


Targets = TopKTargets | OnlineTargets


def token_losses(
    s_logits: torch.Tensor,
    t_chunk: TopKTargets | torch.Tensor,
    labels: torch.Tensor,
    *,
    kind: str,
    temperature: float,
    param: float,
    ce_weight: float,
) -> torch.Tensor:
    """Per-token loss [n] from student logits [n, V] and teacher top-k targets or teacher logits."""
    s_logits = s_logits.float()
    kd = torch.zeros(s_logits.shape[0], device=s_logits.device)
    if ce_weight < 1.0:
        if isinstance(t_chunk, TopKTargets):
            logq = bucket_logprobs(s_logits, t_chunk.indices)
            logp = torch.cat([t_chunk.logprobs.float(), t_chunk.tail.float()[:, None]], -1)
            if temperature != 1.0:
                logq = F.log_softmax(logq / temperature, -1)
                logp = F.log_softmax(logp / temperature, -1)
        else:
            logq = F.log_softmax(s_logits / temperature, -1)
            logp = F.log_softmax(t_chunk.float() / temperature, -1)
        kd = divergence(kind, logp, logq, param) * temperature**2
    if ce_weight == 0.0:
        return kd
    ce = F.cross_entropy(s_logits, labels, reduction="none")
    return (1.0 - ce_weight) * kd + ce_weight * ce


def _slice(targets: Targets, lo: int, hi: int, vocab: int) -> TopKTargets | torch.Tensor:
    if isinstance(targets, TopKTargets):
        return TopKTargets(targets.logprobs[lo:hi], targets.indices[lo:hi], targets.tail[lo:hi])
    with torch.no_grad():
        return targets.head(targets.hidden[lo:hi])[..., :vocab]


def distill_loss(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    targets: Targets,
    labels: torch.Tensor,
    weights: torch.Tensor,
    denom: float,
    *,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    param: float = 0.5,
    ce_weight: float = 0.0,
    vocab: int | None = None,
    chunk_size: int = 512,
) -> torch.Tensor:
    """sum_i weights_i * loss_i / denom over n supervised tokens, `chunk_size` tokens at a time.

    hidden: student hidden states of the supervised tokens [n, H] (the positions *before* each
    label); head: the student's output layer; labels [n]; weights [n]; vocab: the shared
    vocabulary size (logits beyond it, e.g. padding rows, are dropped).
    """
    n = hidden.shape[0]
    total = hidden.new_zeros((), dtype=torch.float32)
    if n == 0:
        return total + 0.0 * hidden.sum()  # keeps the graph (and DDP) connected; value 0, never NaN
    vocab = vocab or int(head(hidden[:1]).shape[-1])
    for lo in range(0, n, chunk_size):
        hi = min(n, lo + chunk_size)

        def chunk_loss(h, lo=lo, hi=hi):
            # teacher logits are made here (and again on recompute) so no chunk's outlive it
            t_chunk = _slice(targets, lo, hi, vocab)
            s_logits = head(h)[..., :vocab]
            per_tok = token_losses(
                s_logits,
                t_chunk,
                labels[lo:hi],
                kind=kind,
                temperature=temperature,
                param=param,
                ce_weight=ce_weight,
            )
            return (per_tok * weights[lo:hi]).sum()

        h = hidden[lo:hi]
        if torch.is_grad_enabled() and h.requires_grad:
            total = total + checkpoint(chunk_loss, h, use_reentrant=False)
        else:
            total = total + chunk_loss(h)
    return total / denom
