"""The artifact folder format and atomic writes.

An artifact is a folder other tools open without us: a Hugging Face model folder
(config.json + model.safetensors + tokenizer files), an ONNX folder (model.onnx + config.json +
tokenizer files) or a TensorRT engine folder, each with `slm_meta.json` describing its lineage
(`{"kind", "stage", "parent", "metrics", ...}`). `Kind` below is the one list of artifact kinds;
a quantized Hugging Face folder says `"kind": "hf-quantized"` and, in `"quant_format"`, how its weights
were saved (models/quantized.py reopens it from that, without looking at the files).

Everything here writes through a temporary sibling renamed into place, so a crash never leaves
a half-written file or folder that looks whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

META_FILE = "slm_meta.json"
_CHUNK = 1 << 20


class Kind(str, Enum):
    """What an artifact folder holds. The value is what `slm_meta.json` says in "kind"."""

    HF = "hf"  # a Hugging Face folder with float weights
    HF_QUANTIZED = "hf-quantized"  # a Hugging Face folder with torchao/bitsandbytes weights
    ONNX = "onnx"  # optimum's merged decoder (model.onnx) and its quantized variants
    TENSORRT = "tensorrt"  # a TensorRT engine built from the ONNX export

    def __str__(self) -> str:  # "hf", not "Kind.HF", in messages and f-strings
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def hf_folder(self) -> bool:
        """A Hugging Face folder (config.json + safetensors): opened with transformers."""
        return KIND_TABLE[self].hf_folder


@dataclass(frozen=True)
class KindInfo:
    """One row of the artifact kinds table."""

    kind: Kind
    what: str  # for messages and docs
    hf_folder: bool  # config.json + safetensors, opened with transformers
    marker_suffixes: tuple[str, ...] = ()  # files that identify it when slm_meta.json is silent


KIND_TABLE: dict[Kind, KindInfo] = {
    row.kind: row
    for row in [
        KindInfo(Kind.HF, "a Hugging Face folder", hf_folder=True),
        KindInfo(Kind.HF_QUANTIZED, "a quantized Hugging Face folder (torchao, bitsandbytes)", hf_folder=True),
        KindInfo(Kind.ONNX, "an ONNX folder (model.onnx)", hf_folder=False, marker_suffixes=(".onnx",)),
        KindInfo(Kind.TENSORRT, "a TensorRT engine folder", hf_folder=False, marker_suffixes=(".engine", ".plan")),
    ]
}
ENGINE_FILE = "model.engine"  # the TensorRT engine inside its folder (written by export, read by runtime)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # mkstemp/mkdtemp create private (0600/0700) entries; published ones follow the umask


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (cheap; silently skipped where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write `text` to `path` through a temporary sibling file, fsynced, then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def write_json_atomic(path: Path | str, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_meta(folder: Path | str, **meta: Any) -> Path:
    """Write `slm_meta.json` in `folder` (replacing any earlier one), atomically."""
    return write_json_atomic(Path(folder) / META_FILE, meta)


def read_meta(folder: Path | str) -> dict[str, Any]:
    """The folder's `slm_meta.json`, or {} when it has none (e.g. a plain HF folder)."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def artifact_kind(folder: Path | str) -> Kind:
    """The folder's Kind: what slm_meta.json says, else (a folder we did not write) from its files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"artifact folder not found: {folder}")
    kind = read_meta(folder).get("kind")
    if kind is not None:
        try:
            return Kind(kind)
        except ValueError:
            known = ", ".join(k.value for k in Kind)
            raise ValueError(f"{folder / META_FILE} names an unknown kind {kind!r} (known: {known})") from None
    names = {p.name for p in folder.iterdir()}
    for row in KIND_TABLE.values():
        if row.marker_suffixes and any(n.endswith(row.marker_suffixes) for n in names):
            return row.kind
    if "config.json" in names:
        return Kind.HF
    raise ValueError(
        f"{folder} is not a model artifact: expected config.json (Hugging Face), "
        "model.onnx (ONNX) or an .engine/.plan file (TensorRT)"
    )


def _hash_file(path: Path, h: Any) -> None:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def hash_folder(folder: Path | str) -> str:
    """A content hash of every file under `folder` (relative names and bytes), hex, 16 chars.

    Symlinks are followed; hidden temporary files (`.*.tmp`) are ignored.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"cannot hash a missing artifact: {folder}")
    if folder.is_file():
        h = hashlib.sha256(b"file\0")
        _hash_file(folder, h)
        return h.hexdigest()[:16]
    h = hashlib.sha256(b"folder\0")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            continue
        h.update(rel.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        _hash_file(path, h)
    return h.hexdigest()[:16]


def replace_dir(src: Path, final: Path) -> None:
    """Move the finished folder `src` to `final`, replacing an old `final` without a gap that
    could look complete: the old one is first renamed aside, then removed."""
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(src, final)
    _fsync_dir(final.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success rename it to `final`, on error remove it.

    with atomic_dir(run / "03-export") as tmp:
        write files into tmp
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)
