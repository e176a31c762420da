"""The run folder's layout on disk: the lock, the previous manifest, the stages' temporary
folders (kept across a crash when their key matches, for trainers to resume) and `final`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slm_toolkit.core.artifacts import write_text_atomic

MANIFEST = "manifest.json"
KEY_FILE = ".slm_stage_key"
ERROR_LOG = "error.log"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One `slm run` per run folder at a time (the kernel drops the lock if the process dies)."""
    with open(run_dir / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{run_dir}: another `slm run` is using this run folder") from None
        yield


def old_records(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The previous manifest's stage records, by folder name ({} when there is none)."""
    path = run_dir / MANIFEST
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}  # unreadable: nothing can be trusted, rerun everything
    return {r["folder"]: r for r in old.get("stages", []) if isinstance(r, dict) and "folder" in r}


def clear_stage_folders(run_dir: Path) -> None:
    for child in run_dir.iterdir():
        if child.is_dir() and child.name[:2].isdigit() and child.name[2:3] == "-":
            shutil.rmtree(child)
    for name in ("final", MANIFEST, ERROR_LOG, "report.md", "report.png"):
        path = run_dir / name
        if path.is_symlink() or path.is_file():
            path.unlink()


def prepare_workdir(final: Path, key: str) -> tuple[Path, bool]:
    """The stage's `.tmp` folder: kept when it holds the same key (resume), else made fresh."""
    if final.exists():
        shutil.rmtree(final)  # an outdated result; the manifest no longer says completed
    tmp = final.with_name(final.name + ".tmp")
    key_file = tmp / KEY_FILE
    if tmp.is_dir() and key_file.is_file() and key_file.read_text().strip() == key:
        return tmp, True
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write_text_atomic(key_file, key + "\n")
    return tmp, False


def link_final(run_dir: Path, target: Path) -> None:
    """`final` -> the last artifact, replaced atomically (a symlink renamed over the old one)."""
    try:
        dest = os.path.relpath(target.resolve(), run_dir.resolve())
    except ValueError:
        dest = str(target.resolve())
    tmp = run_dir / ".final.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(dest, tmp)
    os.replace(tmp, run_dir / "final")
