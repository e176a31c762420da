"""The two served models of the serving benchmark, prepared once into benchmarks/serving/_work/.

- `student`: the quickstart's student (builtin:arith-student, ~0.19M parameters, the demo
  character tokenizer).
- `llama134m`: a Llama built from config (hidden 768, 12 layers, 12 heads, MLP 2048, vocab
  32000; random weights, seed 0) with a byte-level BPE tokenizer trained on GSM8K.

Every request must decode its full length on every server, including `transformers serve`,
which rejects `ignore_eos`/`min_tokens`. So the lm_head rows of EOS and every other token
that decodes to no visible text (special tokens, ids past the tokenizer, partial UTF-8 bytes)
are zeroed: their logit is 0 while the largest of thousands of random logits is well above 0,
so greedy decoding never picks them (checked in `check_full_length`). Both get a one-line chat
template so that every server (ours, `transformers serve`) sees identical prompt ids.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n' }}{% endif %}"
)
LLAMA_134M = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=12,
    intermediate_size=2048,
    vocab_size=32000,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)


def _invisible_ids(tok, vocab_size: int) -> list[int]:
    """Ids that stream no text: special tokens, ids past the tokenizer, partial UTF-8 pieces."""
    bad = set(tok.all_special_ids) | set(range(len(tok), vocab_size))
    for i in range(min(len(tok), vocab_size)):
        text = tok.decode([i])
        if not text.strip() or "\ufffd" in text:
            bad.add(i)
    return sorted(bad)


def _finish(folder: Path, model, tok) -> Path:
    import torch

    with torch.no_grad():
        model.lm_head.weight[_invisible_ids(tok, model.config.vocab_size)] = 0.0
    tok.chat_template = CHAT_TEMPLATE
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "bench_model.json").write_text(json.dumps({"params": sum(p.numel() for p in model.parameters())}))
    tmp.rename(folder)
    return folder


def llama134m(work: Path) -> Path:
    folder = work / "llama134m"
    if folder.is_dir():
        return folder
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from slm_toolkit.demo.tokenizer import train_bpe_tokenizer

    lines = gsm8k_train_file().read_text().splitlines()
    texts = [r["question"] + "\n" + r["answer"] for r in map(json.loads, lines)]
    tok = train_bpe_tokenizer(texts, LLAMA_134M["vocab_size"])
    cfg = LlamaConfig(
        **LLAMA_134M, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    torch.manual_seed(0)
    return _finish(folder, LlamaForCausalLM(cfg), tok)


def gsm8k_train_file() -> Path:
    """GSM8K's train.jsonl in the folder named by --gsm8k / $SLM_GSM8K (the tokenizer's corpus)."""
    folder = os.environ.get("SLM_GSM8K")
    if not folder or not (Path(folder) / "train.jsonl").is_file():
        raise SystemExit(
            f"llama134m trains its tokenizer on GSM8K: pass --gsm8k FOLDER or set SLM_GSM8K (got {folder!r})"
        )
    return Path(folder) / "train.jsonl"


def student(work: Path) -> Path:
    folder = work / "student"
    if folder.is_dir():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slm_toolkit.models.resolve import resolve_model

    src = resolve_model("builtin:arith-student", task={}, seed=0)
    model = AutoModelForCausalLM.from_pretrained(src, use_safetensors=True)
    return _finish(folder, model, AutoTokenizer.from_pretrained(src))


def onnx(folder: Path) -> Path:
    """The ONNX export of an HF folder (optimum, merged decoder with KV cache), cached beside it."""
    out = folder.with_name(folder.name + "-onnx")
    if out.is_dir():
        return out
    from slm_toolkit.models.onnx_export import export_onnx

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export_onnx(folder, tmp)
    tmp.rename(out)
    return out


def check_full_length(folder: Path, prompt_ids: list[int], n: int) -> bool:
    """Greedy decoding of `n` tokens never emits an invisible id (so every server streams n tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=tok.pad_token_id,
        )[0, len(prompt_ids) :]
    bad = set(_invisible_ids(tok, model.config.vocab_size))
    return len(out) == n and not bad.intersection(out.tolist())
