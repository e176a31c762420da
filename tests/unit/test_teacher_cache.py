"""Offline teacher cache: exact top-k, sharded safetensors, reuse, refusal when things change."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from slm_toolkit.demo.tokenizer import build_demo_tokenizer
from slm_toolkit.distill.batching import sequence_key
from slm_toolkit.distill.teacher_cache import (
    FORMAT_VERSION,
    TeacherCacheMismatch,
    cache_folder,
    fill_cache,
    open_cache,
    tokenizer_hash,
)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    tok = build_demo_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval(), tok


def _seqs(n, start=1):
    g = torch.Generator().manual_seed(start)
    out = [
        torch.randint(6, 27, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g).tolist() for _ in range(n)
    ]
    return {sequence_key(s): s for s in out}


def test_cache_holds_the_exact_top_k_and_is_reused(teacher, tmp_path):
    model, tok = teacher
    vocab, k = len(tok), 5
    cache = open_cache(tmp_path / "c", "T1", tokenizer_hash(tok), k, vocab)
    seqs = _seqs(7)
    forwarded = fill_cache(cache, model, seqs, vocab=vocab, pad_id=0, batch_size=3, shard_sequences=4, progress=False)
    assert forwarded >= sum(len(s) for s in seqs.values())
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        ".lock",
        "meta.json",
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    key, ids = next(iter(seqs.items()))
    lp, ix, tail = cache.sequence(key)
    with torch.no_grad():
        full = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1)
    want = full.topk(k, -1)
    torch.testing.assert_close(lp.double(), want.values, rtol=1e-5, atol=1e-5)
    assert torch.equal(ix.long(), want.indices)
    # the tail: the log of the mass of every token outside the top k, summed over the vocabulary
    outside = full.exp().sum(-1) - want.values.exp().sum(-1)
    rest = full.scatter(-1, want.indices, float("-inf")).logsumexp(-1)
    torch.testing.assert_close(tail.double(), rest, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tail.double().exp(), outside, rtol=1e-4, atol=1e-6)
    # targets for chosen positions of a micro-batch (row 0 = `key`, positions 1 and 2)
    t = cache.targets([key], torch.tensor([0, 0]), torch.tensor([1, 2]))
    torch.testing.assert_close(t.logprobs.double(), want.values[1:3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(t.tail.double(), rest[1:3], rtol=1e-5, atol=1e-5)
    # reopened: nothing to compute for the same sequences; new ones go to a new shard
    again = open_cache(tmp_path / "c", "T1", tokenizer_hash(tok), k, vocab)
    assert fill_cache(again, model, seqs, vocab=vocab, pad_id=0, progress=False) == 0
    more = seqs | _seqs(2, start=9)
    assert fill_cache(again, model, more, vocab=vocab, pad_id=0, progress=False) > 0
    assert all(key in again for key in more) and len(again.meta["shards"]) == 3
    assert not list((tmp_path / "c").glob("*.tmp"))  # atomic writes leave no temporary files


def test_a_cache_of_an_older_format_is_rebuilt_not_read(teacher, tmp_path):
    model, tok = teacher
    seqs = _seqs(3)
    cache = open_cache(tmp_path / "c", "T1", "TOK1", 4, len(tok))
    fill_cache(cache, model, seqs, vocab=len(tok), pad_id=0, progress=False)
    # turn it into a version-1 cache: no `version` in the meta, shards without `tail`
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    del meta["version"]
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    shard = tmp_path / "c" / "shard-00000.safetensors"
    old = load_file(shard)
    save_file({k: v for k, v in old.items() if k != "tail"}, shard)
    again = open_cache(tmp_path / "c", "T1", "TOK1", 4, len(tok))
    assert not any(key in again for key in seqs)  # nothing of the old format is offered
    assert fill_cache(again, model, seqs, vocab=len(tok), pad_id=0, progress=False) > 0  # rebuilt
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["version"] == FORMAT_VERSION
    assert [p.name for p in sorted((tmp_path / "c").glob("shard-*"))] == ["shard-00000.safetensors"]
    lp, _, tail = again.sequence(next(iter(seqs)))
    assert tail.shape == lp.shape[:1] and torch.isfinite(tail).all()


def test_changed_teacher_or_tokenizer_is_refused(teacher, tmp_path):
    model, tok = teacher
    cache = open_cache(tmp_path / "c", "T1", "TOK1", 4, len(tok))
    fill_cache(cache, model, _seqs(2), vocab=len(tok), pad_id=0, progress=False)
    with pytest.raises(TeacherCacheMismatch, match="different teacher .*Delete that folder"):
        open_cache(tmp_path / "c", "T2", "TOK1", 4, len(tok))
    with pytest.raises(TeacherCacheMismatch, match="different tokenizer"):
        open_cache(tmp_path / "c", "T1", "TOK2", 4, len(tok))


def test_cache_location_and_tokenizer_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_CACHE", str(tmp_path))
    a = cache_folder(tmp_path / "teacher", 32, 100)
    assert a.parent == tmp_path / "teacher_cache"
    assert a != cache_folder(tmp_path / "teacher", 16, 100) != cache_folder(tmp_path / "other", 32, 100)
    assert tokenizer_hash(build_demo_tokenizer()) == tokenizer_hash(build_demo_tokenizer())
    assert tokenizer_hash(build_demo_tokenizer()) != tokenizer_hash(build_demo_tokenizer(chars="0123456789+-="))
