"""Tokenizers built locally with the `tokenizers` library, wrapped for transformers.

- `build_demo_tokenizer()`: character level, one token per character of the demo task.
- `train_bpe_tokenizer(texts, vocab_size)`: byte-level BPE (GSM8K, tests).

Both declare `model_input_names=["input_ids", "attention_mask"]`: without it the wrapper also
returns token_type_ids and `generate` fails (ENVIRONMENT.md). Both round-trip exactly:
`decode(encode(x)) == x` for any text the vocabulary covers, and save_pretrained /
AutoTokenizer.from_pretrained work offline.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from slm_toolkit.demo.task import DEMO_CHARS

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, THINK_OPEN, THINK_CLOSE]


def build_demo_tokenizer(chars: str = DEMO_CHARS) -> PreTrainedTokenizerFast:
    """Character-level tokenizer: the six special tokens (ids 0-5), then one id per character."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    # A BPE model without merges splits text into single characters (unknown ones become <unk>);
    # it encodes about twice as fast as WordLevel over a per-character Split pre-tokenizer.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.decoder = decoders.Fuse()
    return _wrap(tok)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts` (no prefix space, so pieces tokenize independently)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok)


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    # tokenizer(text) prepends <bos>, as Llama tokenizers do; segments.py tokenizes its pieces
    # with add_special_tokens=False and places <bos>/<eos> itself.
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[THINK_OPEN, THINK_CLOSE],
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
    )
    return wrapped
