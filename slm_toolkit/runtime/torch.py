"""The PyTorch backend: a Hugging Face causal LM behind the Generator protocol.

Prompts of a batch are left-padded; the attention mask hides the padding and position ids
count real tokens only, so a padded row computes what it would compute alone. The KV cache
(transformers' DynamicCache) lives in the decode state; `merge` pads caches on the left to a
common length and concatenates them along the batch (continuous batching), `select` keeps rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from slm_toolkit.core.errors import BackendUnavailable
from slm_toolkit.models.load import load_causal_lm
from slm_toolkit.runtime.base import GenerationConfig, set_special_tokens
from slm_toolkit.runtime.decoding import candidate_logprobs, generate


@dataclass
class TorchState:
    """Decode state of a batch: KV cache, attention mask over cache positions, next position ids."""

    cache: DynamicCache
    mask: torch.Tensor  # [B, T] long, 0 where the cache holds padding
    positions: torch.Tensor  # [B] long, the position id of each row's next token

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad ragged token lists to [B, T] ids and mask."""
    if any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counting real tokens only (padding gets 0), as transformers' generate does."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _cache_layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


class TorchGenerator:
    """Generator over an in-memory transformers model (fp32, bf16, torchao- or bnb-quantized)."""

    backend = "torch"

    def __init__(self, model: Any, eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None):
        self.model = model.eval()
        cfg = model.config
        set_special_tokens(self, cfg, getattr(model, "generation_config", None), eos_token_id, pad_token_id)
        self.max_length = int(getattr(cfg, "max_position_embeddings", 2048) or 2048)
        self.device = next(model.parameters()).device

    @classmethod
    def from_folder(
        cls, folder: Path, device: str = "cpu", dtype: torch.dtype | None = None, trust_remote_code: bool = False
    ) -> TorchGenerator:
        return cls(load_causal_lm(Path(folder), device, dtype or "auto", trust_remote_code))

    # -- the protocol --------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, input_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, TorchState]:
        ids, mask = left_pad(input_ids, self.pad_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = DynamicCache()
        pos = position_ids(mask)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        state = TorchState(out.past_key_values, mask, mask.sum(-1))
        return self._np(out.logits[:, -1]), state

    @torch.inference_mode()
    def decode_step(self, next_ids: Sequence[int], state: TorchState) -> tuple[np.ndarray, TorchState]:
        ids = torch.as_tensor(list(next_ids), dtype=torch.long, device=self.device).view(-1, 1)
        mask = torch.cat([state.mask, torch.ones_like(state.mask[:, :1])], dim=1)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=state.positions.view(-1, 1),
            past_key_values=state.cache,
            use_cache=True,
        )
        new = TorchState(out.past_key_values, mask, state.positions + 1)
        return self._np(out.logits[:, -1]), new

    def generate(self, input_ids: Sequence[Sequence[int]], config: GenerationConfig) -> list[list[int]]:
        return generate(self, input_ids, config)

    def merge(self, states: Sequence[TorchState]) -> TorchState:
        width = max(int(s.mask.shape[1]) for s in states)
        masks, per_layer = [], None
        for s in states:
            pad = width - int(s.mask.shape[1])
            masks.append(torch.nn.functional.pad(s.mask, (pad, 0)))
            layers = [(_lpad(k, pad), _lpad(v, pad)) for k, v in _cache_layers(s.cache)]
            per_layer = [[kv] for kv in layers] if per_layer is None else [p + [kv] for p, kv in zip(per_layer, layers)]
        data = [(torch.cat([k for k, _ in p]), torch.cat([v for _, v in p])) for p in per_layer]
        return TorchState(DynamicCache(data), torch.cat(masks), torch.cat([s.positions for s in states]))

    def select(self, state: TorchState, keep: Sequence[int]) -> TorchState:
        idx = torch.as_tensor(list(keep), dtype=torch.long, device=state.mask.device)
        data = [(k[idx], v[idx]) for k, v in _cache_layers(state.cache)]
        mask = state.mask[idx]
        # drop cache columns that are padding in every remaining row
        first = int((mask.sum(0) > 0).nonzero()[0]) if mask.numel() else 0
        data = [(k[:, :, first:], v[:, :, first:]) for k, v in data]
        return TorchState(DynamicCache(data), mask[:, first:], state.positions[idx])

    @torch.inference_mode()
    def score(self, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]) -> list[float]:
        first_logits, state = self.prefill([prompt_ids])
        longest = max((len(c) for c in candidates), default=0)
        if longest <= 1:  # every candidate's only token is predicted by the prompt's last position
            return candidate_logprobs(first_logits[0], np.zeros((len(candidates), 0, 0)), candidates)
        n = len(candidates)
        feed = [list(c[:-1]) for c in candidates]  # the last token of a candidate predicts nothing we need
        width = longest - 1
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        cmask = torch.zeros((n, width), dtype=torch.long)
        for i, c in enumerate(feed):  # right padding: pads come after the tokens they cannot affect
            ids[i, : len(c)] = torch.as_tensor(c, dtype=torch.long) if c else ids[i, :0]
            cmask[i, : len(c)] = 1
        cache = self._expand(state.cache, n)
        mask = torch.cat([state.mask.expand(n, -1), cmask.to(self.device)], dim=1)
        pos = state.positions.view(1, 1) + torch.arange(width, device=self.device).view(1, -1)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask,
            position_ids=pos.expand(n, -1),
            past_key_values=cache,
            use_cache=True,
        )
        return candidate_logprobs(first_logits[0], out.logits.float().cpu().numpy(), candidates)

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _np(logits: torch.Tensor) -> np.ndarray:
        return logits.detach().float().cpu().numpy()

    @staticmethod
    def _expand(cache: DynamicCache, n: int) -> DynamicCache:
        """The prompt's cache repeated for n candidates (computed once, shared by all)."""
        return DynamicCache(
            [
                (k.expand(n, -1, -1, -1).contiguous(), v.expand(n, -1, -1, -1).contiguous())
                for k, v in _cache_layers(cache)
            ]
        )


def open_torch(
    folder: Path, device: str = "cpu", threads: int | None = None, trust_remote_code: bool = False
) -> TorchGenerator:
    """The torch backend's factory (runtime/backends.py): a Hugging Face folder, float or quantized."""
    if threads:
        torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable("device 'cuda' was asked for but PyTorch sees no CUDA GPU; use device='cpu'")
    return TorchGenerator.from_folder(folder, device=device, trust_remote_code=trust_remote_code)


def _lpad(t: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad a [B, H, T, D] cache tensor with `pad` zero positions on the left of T."""
    return torch.nn.functional.pad(t, (0, 0, pad, 0)) if pad else t
