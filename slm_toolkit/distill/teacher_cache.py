"""Offline teacher: top-k log-probabilities and token ids for every position, written once.

Layout: `paths.cache_dir()/teacher_cache/<key>/` with `<key>` = hash(teacher folder, top_k, shared
vocab); inside, `meta.json` (format version, teacher hash, tokenizer hash, top_k, vocab, shards)
and shards `shard-NNNNN.safetensors` holding `logprobs` [T, k] (float32, at temperature 1),
`indices` [T, k] (int32), `tail` [T] (float32: the log of the mass outside the top k, a
log-sum-exp over the full distribution taken when the shard is written) and `offsets` [m + 1]
for the m sequences the shard lists by content key.

A cache written in an older format (`version` below FORMAT_VERSION, e.g. without `tail`) is
never read: the next fill deletes its shards and builds it again.

The cache grows: a later run or a later distill stage (healing) with the same teacher reads the
sequences already there and only computes the missing ones, in new shards. Every shard and the
meta file are written through a temporary file renamed into place, so a crash leaves either the
old cache or the new one. A teacher or tokenizer whose content hash differs from the one the
cache was written with is refused with a clear error (never silently mixed).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from slm_toolkit.core import paths
from slm_toolkit.distill.losses import TopKTargets, teacher_topk

META = "meta.json"
FORMAT_VERSION = 2  # 2: shards hold `tail` (log-sum-exp of the non-top-k mass) beside the top k


class TeacherCacheMismatch(RuntimeError):
    """The cache was written by another teacher or tokenizer."""


def tokenizer_hash(tokenizer) -> str:
    """Content hash of a tokenizer: its full serialized vocabulary/merges and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    text += json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_folder(teacher_path: Path | str, top_k: int, vocab: int) -> Path:
    ident = f"{Path(teacher_path).resolve()}|k={top_k}|v={vocab}"
    return paths.cache_dir() / "teacher_cache" / hashlib.sha256(ident.encode()).hexdigest()[:16]


class TeacherCache:
    """Read side: targets for the supervised positions of a micro-batch."""

    def __init__(self, folder: Path, meta: dict):
        self.folder, self.meta = folder, meta
        self._where = {key: (i, j) for i, sh in enumerate(meta["shards"]) for j, key in enumerate(sh["keys"])}
        self._loaded: dict[int, dict[str, torch.Tensor]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def sequence(self, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logprobs [n-1, k], indices [n-1, k], tail [n-1]) for every position of sequence `key`."""
        if key not in self._where:
            raise KeyError(f"sequence {key} is not in the teacher cache {self.folder}")
        shard, j = self._where[key]
        if shard not in self._loaded:
            self._loaded[shard] = load_file(self.folder / self.meta["shards"][shard]["file"])
        t = self._loaded[shard]
        lo, hi = int(t["offsets"][j]), int(t["offsets"][j + 1])
        return t["logprobs"][lo:hi], t["indices"][lo:hi], t["tail"][lo:hi]

    def targets(self, cache_keys: Sequence[str], rows: torch.Tensor, cols: torch.Tensor) -> TopKTargets:
        lps, idxs, tails = [], [], []
        for r, key in enumerate(cache_keys):
            sel = cols[rows == r]
            if len(sel):
                lp, ix, tail = self.sequence(key)
                lps.append(lp[sel])
                idxs.append(ix[sel])
                tails.append(tail[sel])
        k = self.meta["top_k"]
        if not lps:
            return TopKTargets(torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long), torch.zeros(0))
        return TopKTargets(torch.cat(lps).float(), torch.cat(idxs).long(), torch.cat(tails).float())


def _new_meta(teacher_hash: str, tok_hash: str, top_k: int, vocab: int) -> dict:
    return {
        "version": FORMAT_VERSION,
        "teacher_hash": teacher_hash,
        "tokenizer_hash": tok_hash,
        "top_k": top_k,
        "vocab": vocab,
        "distribution": "top-k log-probs at T=1 and the log of the tail mass (KD uses the k+1 buckets)",
        "shards": [],
    }


def _read_meta(folder: Path) -> dict | None:
    """The folder's meta, or None when there is none or it is of an older format (to rebuild)."""
    path = folder / META
    if not path.exists():
        return None
    meta = json.loads(path.read_text())
    return meta if meta.get("version") == FORMAT_VERSION else None


def open_cache(folder: Path, teacher_hash: str, tok_hash: str, top_k: int, vocab: int) -> TeacherCache:
    """The cache in `folder` (empty if new), after checking it was written by this teacher."""
    meta = _read_meta(folder)
    if meta is None:  # new, or an older format that the next fill rebuilds
        return TeacherCache(folder, _new_meta(teacher_hash, tok_hash, top_k, vocab))
    for what, stored, now in (
        ("teacher", meta["teacher_hash"], teacher_hash),
        ("tokenizer", meta["tokenizer_hash"], tok_hash),
    ):
        if stored != now:
            raise TeacherCacheMismatch(
                f"the teacher cache {folder} was written with a different {what} (hash {stored}, now {now}): "
                f"the {what} changed since. Delete that folder to rebuild the cache for the new {what}."
            )
    return TeacherCache(folder, meta)


@torch.no_grad()
def fill_cache(
    cache: TeacherCache,
    teacher,
    sequences: Mapping[str, list[int]],
    *,
    vocab: int,
    pad_id: int,
    device: str = "cpu",
    batch_size: int = 16,
    shard_sequences: int = 4096,
    progress: bool = True,
) -> int:
    """Compute and append the sequences not cached yet; returns the teacher tokens forwarded.
    Holds an exclusive lock on the folder, so concurrent runs never write the same shard."""
    if all(k in cache for k in sequences):
        return 0
    cache.folder.mkdir(parents=True, exist_ok=True)
    with open(cache.folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        meta = _read_meta(cache.folder)
        if meta is not None:  # another run may have added shards meanwhile
            cache.__init__(cache.folder, meta)
        elif (cache.folder / META).exists():  # an older format: rebuilt from scratch, never read
            for old in cache.folder.glob("shard-*.safetensors"):
                old.unlink()
            (cache.folder / META).unlink()
            cache.__init__(cache.folder, dict(cache.meta, shards=[]))
        return _fill_locked(
            cache,
            teacher,
            sequences,
            vocab=vocab,
            pad_id=pad_id,
            device=device,
            batch_size=batch_size,
            shard_sequences=shard_sequences,
            progress=progress,
        )


def _fill_locked(cache, teacher, sequences, *, vocab, pad_id, device, batch_size, shard_sequences, progress) -> int:
    missing = sorted((k for k in sequences if k not in cache), key=lambda k: len(sequences[k]))
    if not missing:
        return 0
    forwarded = 0
    from tqdm.auto import tqdm

    bar = tqdm(total=len(missing), desc="teacher cache", disable=not progress, leave=False)
    for lo in range(0, len(missing), shard_sequences):
        keys = missing[lo : lo + shard_sequences]
        lps, idxs, tails, offsets = [], [], [], [0]
        for b in range(0, len(keys), batch_size):
            batch = [sequences[k] for k in keys[b : b + batch_size]]
            for lp, ix, tail in _topk_batch(teacher, batch, cache.meta["top_k"], vocab, pad_id, device):
                lps.append(lp)
                idxs.append(ix)
                tails.append(tail)
                offsets.append(offsets[-1] + lp.shape[0])
            forwarded += len(batch) * max(len(s) for s in batch)
            bar.update(len(batch))
        tensors = {"logprobs": torch.cat(lps), "indices": torch.cat(idxs), "tail": torch.cat(tails)}
        _write_shard(cache, keys, tensors | {"offsets": torch.tensor(offsets)})
    bar.close()
    return forwarded


def _topk_batch(teacher, batch: list[list[int]], k: int, vocab: int, pad_id: int, device: str):
    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(batch):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    base = getattr(teacher, teacher.base_model_prefix)
    hidden = base(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    head = teacher.get_output_embeddings()
    for r, s in enumerate(batch):  # one row of full-vocab logits at a time
        logp = torch.log_softmax(head(hidden[r, : len(s) - 1]).float()[..., :vocab], -1)
        top, idx, tail = teacher_topk(logp, k)
        yield top.cpu(), idx.to(torch.int32).cpu(), tail.cpu()


def _write_shard(cache: TeacherCache, keys: list[str], tensors: dict[str, torch.Tensor]) -> None:
    n = len(cache.meta["shards"])
    name = f"shard-{n:05d}.safetensors"
    tmp = cache.folder / f".{name}.{os.getpid()}.tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, cache.folder / name)
    meta = dict(cache.meta, shards=cache.meta["shards"] + [{"file": name, "keys": keys}])
    tmp_meta = cache.folder / f".{META}.{os.getpid()}.tmp"
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, cache.folder / META)
    cache.__init__(cache.folder, meta)
