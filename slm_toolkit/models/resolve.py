"""Turn a model spec from a recipe into a local Hugging Face folder.

A spec is one of:
- `builtin:arith-teacher` / `builtin:arith-student`: the demo world's models, trained here on
  first use and cached (see `slm_toolkit.demo.builtin`);
- a local folder holding `config.json` and safetensors weights;
- a Hugging Face hub id (`org/name`, optionally `org/name@revision`): taken from the local
  Hugging Face cache, or downloaded when the hub is reachable and offline mode is off.
"""

from __future__ import annotations

import re
from pathlib import Path

from slm_toolkit.core.errors import ModelNotAvailable

BUILTIN_PREFIX = "builtin:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?(@[\w.\-/]+)?$")
# What we fetch of a hub repository: configs, safetensors weights, tokenizer files (never pickles).
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]


def resolve_model(
    spec: str,
    *,
    task: dict | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> Path:
    """Return a local folder for `spec`; raise ModelNotAvailable with a clear message otherwise.

    `task` (the recipe's demo-task knobs) and `seed` only matter for builtin models, which are
    trained for that task; `trust_remote_code` lets hub downloads include the repo's *.py files.
    """
    spec = spec.strip()
    if spec.startswith(BUILTIN_PREFIX):
        from slm_toolkit.demo.builtin import builtin_model

        return builtin_model(spec[len(BUILTIN_PREFIX) :], task=task or {}, seed=seed, progress=progress)
    path = Path(spec).expanduser()
    if path.exists():
        return _local_folder(path)
    if _looks_like_path(spec) or not _HUB_ID.match(spec):
        raise ModelNotAvailable(f"model folder {spec} does not exist")
    return _hub_snapshot(spec, trust_remote_code)


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~", ".\\")) or spec.count("/") > 1 or "\\" in spec


def _local_folder(path: Path) -> Path:
    if not path.is_dir():
        raise ModelNotAvailable(f"{path} is a file; a model is a folder with config.json and *.safetensors")
    if not (path / "config.json").is_file():
        raise ModelNotAvailable(
            f"{path} is not a model folder: it has no config.json "
            "(expected a Hugging Face folder as written by save_pretrained)"
        )
    return path.resolve()


def _hub_snapshot(spec: str, trust_remote_code: bool) -> Path:
    from huggingface_hub import constants, snapshot_download

    repo_id, _, revision = spec.partition("@")
    patterns = _HUB_PATTERNS + (["*.py"] if trust_remote_code else [])
    kwargs = dict(repo_id=repo_id, revision=revision or None, allow_patterns=patterns)
    try:
        return Path(snapshot_download(local_files_only=True, **kwargs))
    except Exception as cached_error:  # noqa: BLE001 - any failure means "not cached"
        if constants.HF_HUB_OFFLINE:
            raise _not_available(spec) from cached_error
    try:
        return Path(snapshot_download(**kwargs))
    except Exception as download_error:  # noqa: BLE001 - network, auth, missing repo
        raise _not_available(spec, download_error) from download_error


def _not_available(spec: str, error: Exception | None = None) -> ModelNotAvailable:
    if error is None:
        why = " (HF_HUB_OFFLINE is set)"
    else:
        first_line = (str(error).splitlines() or [""])[0][:200]
        why = f" ({type(error).__name__}: {first_line})"
    return ModelNotAvailable(
        f"{spec} is not in the local Hugging Face cache and the hub is not reachable from this "
        f"machine{why}; download it elsewhere and pass a local folder"
    )
