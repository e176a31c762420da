"""Compute accounting: the ONE helper every training stage uses to report its cost.

Counts tokens forwarded (student, teacher), supervised tokens, analytic FLOPs (Kaplan et al.:
training ≈ 6 · params · tokens, forward only ≈ 2 · params · tokens; attention's quadratic term
is left out, which is small at these sequence lengths), wall time, peak memory and tokens/s.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` (reset at start). On the CPU, the
process's resident set size (RSS), read from /proc/self/statm at every `sample()` (the trainer
samples right after each forward and backward, where activations peak) and reported both as
the peak RSS and as the peak above the RSS when accounting started (the training working set:
activations, gradients, optimizer state), plus `activation_mb`, the largest growth of the RSS
from just before a forward pass (`begin()`) to its peak. ru_maxrss cannot be reset, so it is
only a fallback. For RSS to follow freed tensors, glibc must not keep freed blocks: set
MALLOC_MMAP_THRESHOLD_=65536 in the environment when measuring (the benchmarks do).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass, field

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process, in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def training_flops(params: int, tokens: int) -> float:
    """Forward + backward FLOPs of a dense transformer: 6 · params · tokens."""
    return 6.0 * params * tokens


def forward_flops(params: int, tokens: int) -> float:
    """Forward-only FLOPs: 2 · params · tokens."""
    return 2.0 * params * tokens


@dataclass
class Accountant:
    student_params: int
    teacher_params: int = 0
    device: str = "cpu"
    student_tokens: int = 0  # positions the student computed (padding included)
    student_train_tokens: int = 0  # of which with a backward pass
    teacher_tokens: int = 0  # positions the teacher computed (online, cache build, on-policy)
    generated_tokens: int = 0  # sampled by the student (on-policy; forward with KV cache)
    supervised_tokens: int = 0
    examples: int = 0
    empty_examples: int = 0  # examples whose supervised tokens were all cut away
    wall_time_s: float = 0.0  # time of previous segments (resume), plus the current one
    _t0: float = field(default_factory=time.perf_counter)
    _rss0: int = field(default_factory=rss_bytes)
    _rss_peak: int = 0
    _rss_before: int = 0
    _act_peak: int = 0  # largest RSS growth from just before a forward pass to its peak

    def __post_init__(self) -> None:
        self._rss_peak = self._rss0
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()

    def begin(self) -> None:
        """Call just before a forward pass: activation memory is measured from here."""
        self._rss_before = rss_bytes()

    def sample(self) -> None:
        """Record the current memory (call where activations peak)."""
        now = rss_bytes()
        self._rss_peak = max(self._rss_peak, now)
        if self._rss_before:
            self._act_peak = max(self._act_peak, now - self._rss_before)

    def elapsed(self) -> float:
        return self.wall_time_s + time.perf_counter() - self._t0

    def state(self) -> dict[str, float]:
        """Counters to checkpoint (so a resumed run reports the whole run's totals)."""
        keys = (
            "student_tokens",
            "student_train_tokens",
            "teacher_tokens",
            "generated_tokens",
            "supervised_tokens",
            "examples",
            "empty_examples",
        )
        return {k: getattr(self, k) for k in keys} | {"wall_time_s": self.elapsed()}

    def restore(self, state: dict[str, float]) -> None:
        for k, v in state.items():
            setattr(self, k, type(getattr(self, k))(v))
        self._t0 = time.perf_counter()

    def metrics(self) -> dict[str, float]:
        wall = self.elapsed()
        s_flops = training_flops(self.student_params, self.student_train_tokens) + forward_flops(
            self.student_params, self.student_tokens - self.student_train_tokens + self.generated_tokens
        )
        t_flops = forward_flops(self.teacher_params, self.teacher_tokens)
        out = {
            "tokens_student": float(self.student_tokens),
            "tokens_teacher": float(self.teacher_tokens),
            "tokens_generated": float(self.generated_tokens),
            "tokens_supervised": float(self.supervised_tokens),
            "examples": float(self.examples),
            "examples_without_supervision": float(self.empty_examples),
            "flops_student": s_flops,
            "flops_teacher": t_flops,
            "flops": s_flops + t_flops,
            "wall_time_s": wall,
            "tokens_per_s": self.student_tokens / wall if wall > 0 else 0.0,
        }
        return out | self.memory()

    def memory(self) -> dict[str, float]:
        self.sample()
        mb = 1024.0 * 1024.0
        out = {
            "peak_rss_mb": self._rss_peak / mb,
            "peak_memory_mb": (self._rss_peak - self._rss0) / mb,
            "activation_mb": self._act_peak / mb,
        }
        if self.device.startswith("cuda"):
            import torch

            out["peak_memory_mb"] = torch.cuda.max_memory_allocated() / mb
        return out
