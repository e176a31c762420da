"""Structured width pruning of a Llama-style decoder: KV-head groups, MLP channels, hidden width.

- KV-head groups (GQA-aware): a KV head goes with the query heads that read it (its q rows, k
  and v rows, and o columns), so num_attention_heads stays a multiple of num_key_value_heads.
  The same number of groups is removed in every layer, chosen per layer by importance.
- MLP channels: the same number in every layer; gate/up rows and down columns together.
- hidden width: one set of channels for the whole residual stream (embeddings, every norm,
  every projection's input or output, lm_head).
Kept MLP and hidden widths are multiples of `round_to`; heads go in whole groups of head_dim.

torch-pruning's dependency graph removes the MLP and hidden channels (it finds every coupled
tensor: gate/up/down; embeddings, norms, residual adds, lm_head). Its graph cannot build the
group of a GQA attention block in 1.6.1 (see importance.py), so a KV group is removed with
torch-pruning's own per-layer pruning functions on the four projections, whose coupling is fixed
by the architecture. Traps from ENVIRONMENT.md: the graph is built with `use_cache=False`, our own
dicts are passed, and the config is rewritten afterwards so `from_pretrained` reloads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class WidthPlan:
    kv_heads_removed: int  # per layer
    intermediate_keep: int | None  # None: MLP untouched
    hidden_keep: int | None  # None: hidden width untouched

    @property
    def active(self) -> bool:
        return bool(self.kv_heads_removed or self.intermediate_keep or self.hidden_keep)


def head_dim_of(config) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def plan_width(config, heads: float, mlp: float, hidden: float, round_to: int) -> WidthPlan:
    """Counts to keep/remove for this model; ValueError naming the field when a ratio is impossible."""
    n_kv = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    kv_removed = 0
    if heads:
        kv_removed = max(1, math.floor(heads * n_kv + 0.5))
        if kv_removed >= n_kv:
            raise ValueError(
                f"prune.heads: {heads} would remove all {n_kv} KV heads of this model "
                f"(at most {(n_kv - 1) / n_kv:.3f} keeps one)"
            )
    return WidthPlan(
        kv_removed,
        _keep("mlp", "intermediate_size", config.intermediate_size, mlp, round_to),
        _keep("hidden", "hidden_size", config.hidden_size, hidden, round_to),
    )


def _keep(field: str, dim: str, n: int, ratio: float, round_to: int) -> int | None:
    if not ratio:
        return None
    keep = int(n * (1 - ratio)) // round_to * round_to  # rounded down, as torch-pruning does: removes >= ratio
    if keep < round_to:
        raise ValueError(
            f"prune.{field}: {ratio} leaves fewer than round_to={round_to} of the model's {dim}={n} channels"
        )
    return keep


# -- scores of each structure (from importance.weight_scores' element-wise maps) -----------------
def kv_group_scores(scores: dict[str, torch.Tensor], attn: str, n_kv: int, head_dim: int) -> torch.Tensor:
    """[n_kv]: the summed element scores of each KV group's q/k/v rows and o columns in one layer."""
    q, k, v, o = (scores[f"{attn}.{p}.weight"] for p in ATTN)
    total = q.reshape(n_kv, -1).sum(1) + k.reshape(n_kv, -1).sum(1) + v.reshape(n_kv, -1).sum(1)
    return total + o.reshape(o.shape[0], n_kv, -1).sum((0, 2))


def mlp_channel_scores(scores: dict[str, torch.Tensor], mlp: str) -> torch.Tensor:
    gate, up, down = (scores[f"{mlp}.{p}.weight"] for p in MLP)
    return gate.sum(1) + up.sum(1) + down.sum(0)


def hidden_channel_scores(scores: dict[str, torch.Tensor], hidden: int) -> torch.Tensor:
    """[hidden]: every 2-D weight with a hidden-sized input (or, for o/down, output) contributes."""
    total = torch.zeros(hidden)
    for name, s in scores.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            total += s.sum(1)
        elif s.shape[1] == hidden:  # embed_tokens, lm_head, q/k/v/gate/up inputs
            total += s.sum(0)
    return total


def lowest(score: torch.Tensor, n: int) -> list[int]:
    """Indices of the n least important entries, sorted."""
    return sorted(torch.argsort(score)[:n].tolist())


# -- removal ----------------------------------------------------------------------------------
def prune_width(
    model: nn.Module, plan: WidthPlan, scores: dict[str, torch.Tensor], criterion: str, example_ids: torch.Tensor
) -> dict[str, int]:
    """Prune `model` in place per `plan`; rewrite its config; return the new sizes."""
    import torch_pruning as tp

    config = model.config
    layers = model.model.layers
    n_heads, n_kv, hd = config.num_attention_heads, config.num_key_value_heads, head_dim_of(config)
    finish = torch.sqrt if criterion == "magnitude" else (lambda x: x)  # magnitude = L2 norm
    config.use_cache = False  # with the cache on, torch-pruning's tracing crashes or hangs
    graph = None
    if plan.intermediate_keep or plan.hidden_keep:
        norms = [(p, 0) for n, p in model.named_parameters() if p.dim() == 1 and "norm" in n]
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=example_ids, unwrapped_parameters=list(norms)
        )
    group = n_heads // n_kv
    for i, layer in enumerate(layers):
        prefix = f"model.layers.{i}"
        if plan.kv_heads_removed:
            kv_scores = finish(kv_group_scores(scores, f"{prefix}.self_attn", n_kv, hd))
            remove_kv_groups(layer.self_attn, lowest(kv_scores, plan.kv_heads_removed), group, hd)
        if plan.intermediate_keep:
            ch = finish(mlp_channel_scores(scores, f"{prefix}.mlp"))
            idx = lowest(ch, config.intermediate_size - plan.intermediate_keep)
            graph.get_pruning_group(layer.mlp.down_proj, tp.prune_linear_in_channels, idx).prune()
    if plan.hidden_keep:
        ch = finish(hidden_channel_scores(scores, config.hidden_size))
        idx = lowest(ch, config.hidden_size - plan.hidden_keep)
        graph.get_pruning_group(model.model.embed_tokens, tp.prune_embedding_out_channels, idx).prune()
    return rewrite_config(model, n_kv - plan.kv_heads_removed, group, hd)


def remove_kv_groups(attn: nn.Module, groups: list[int], q_per_kv: int, head_dim: int) -> None:
    """Remove KV heads `groups` and their query heads from one attention block."""
    import torch_pruning as tp

    kv_rows = [g * head_dim + j for g in groups for j in range(head_dim)]
    q_rows = [g * q_per_kv * head_dim + j for g in groups for j in range(q_per_kv * head_dim)]
    tp.prune_linear_out_channels(attn.q_proj, q_rows)
    tp.prune_linear_out_channels(attn.k_proj, kv_rows)
    tp.prune_linear_out_channels(attn.v_proj, kv_rows)
    tp.prune_linear_in_channels(attn.o_proj, q_rows)


def rewrite_config(model: nn.Module, n_kv: int, q_per_kv: int, head_dim: int) -> dict[str, int]:
    """Set the config from the pruned weights (so AutoModelForCausalLM reloads it with no custom code)."""
    config, first = model.config, model.model.layers[0]
    config.num_key_value_heads = n_kv
    config.num_attention_heads = n_kv * q_per_kv
    config.head_dim = head_dim  # explicit: hidden_size // num_attention_heads no longer gives it
    config.intermediate_size = first.mlp.down_proj.in_features
    config.hidden_size = model.model.embed_tokens.embedding_dim
    config.use_cache = True
    for layer in model.model.layers:  # every layer must agree with the config
        a = layer.self_attn
        if (
            a.q_proj.out_features != config.num_attention_heads * head_dim
            or a.k_proj.out_features != n_kv * head_dim
            or layer.mlp.down_proj.in_features != config.intermediate_size
        ):
            raise RuntimeError("width pruning left layers of different shapes; this is a bug in prune/width.py")
    return {
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "intermediate_size": config.intermediate_size,
        "hidden_size": config.hidden_size,
    }
