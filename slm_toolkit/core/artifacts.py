"""The artifact folder format and atomic writes.

An artifact is a folder other tools open without us: a Hugging Face model folder
(config.json + model.safetensors + tokenizer files), an ONNX folder (model.onnx + config.json +
tokenizer files) or a TensorRT engine folder, each with `slm_meta.json` describing its lineage
(`{"kind", "stage", "parent", "metrics", ...}`).

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
from pathlib import Path
from typing import Any

META_FILE = "slm_meta.json"
KINDS = ("hf", "onnx", "tensorrt")
_CHUNK = 1 << 20


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


def artifact_kind(folder: Path | str) -> str:
    """ "hf", "onnx" or "tensorrt": from slm_meta.json when present, else from the files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"artifact folder not found: {folder}")
    kind = read_meta(folder).get("kind")
    if kind in KINDS:
        return kind
    names = {p.name for p in folder.iterdir()}
    if any(n.endswith(".onnx") for n in names):
        return "onnx"
    if any(n.endswith((".engine", ".plan")) for n in names):
        return "tensorrt"
    if "config.json" in names:
        return "hf"
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
