"""Turn a model spec from a recipe into a local Hugging Face folder.

The specs are rows of one table, MODEL_SOURCES, tried in order:
- a `.gguf` file: dequantized once into a cached Hugging Face folder (slm_toolkit.models.gguf);
- a local folder holding `config.json` and safetensors weights;
- a short name of a GGUF model shipped in a pip package (`smollm2`, see models.gguf.PIP_MODELS);
- a Hugging Face hub id (`org/name`, optionally `org/name@revision`): taken from the local
  Hugging Face cache, or downloaded when the hub is reachable and offline mode is off;
- rows added by plugins through the `slm_toolkit.sources` entry points (slm_toolkit.core.sources),
  e.g. the demo world's `builtin:arith-teacher` / `builtin:arith-student` (slm_toolkit.demo.sources).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from slm_toolkit.core.errors import ModelNotAvailable
from slm_toolkit.core.sources import Source, SourceTable
from slm_toolkit.models import gguf

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?(@[\w.\-/]+)?$")
_PREFIXED = re.compile(r"^([A-Za-z][\w.\-]*):(?!//)")  # "builtin:x", not a URL or a Windows drive
# What we fetch of a hub repository: configs, safetensors weights, tokenizer files (never pickles).
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken", "*.jinja"]


@dataclass(frozen=True)
class ModelRequest:
    """What a model source gets: the spec and the recipe's settings that may shape it."""

    spec: str
    task: dict = field(default_factory=dict)  # the recipe's demo-task knobs (builtin models are trained for them)
    seed: int = 0
    trust_remote_code: bool = False  # hub downloads include the repo's *.py files
    progress: bool = True


def resolve_model(
    spec: str,
    *,
    task: dict | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> Path:
    """Return a local folder for `spec`; raise ModelNotAvailable with a clear message otherwise."""
    spec = spec.strip()
    request = ModelRequest(spec, task or {}, seed, trust_remote_code, progress)
    row = MODEL_SOURCES.find(spec)
    if row is not None:
        return Path(row.resolve(request))
    prefixed = _PREFIXED.match(spec)
    if prefixed:
        raise ModelNotAvailable(
            f"unknown model source {prefixed.group(1)!r} in {spec!r}; a model is one of: {MODEL_SOURCES.known()}"
        )
    raise ModelNotAvailable(f"model folder {spec} does not exist")


def resolve_artifact(spec: str | Path, *, progress: bool = True) -> Path:
    """An artifact folder as it is (HF, ONNX, TensorRT), any other model spec (a .gguf file,
    a pip-shipped model's short name, a hub id, a plugin's spec) through resolve_model."""
    text = str(spec).strip()
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if not gguf.is_gguf_path(text):
        if path.exists():
            raise ModelNotAvailable(f"{text} is a file; expected an artifact folder, a .gguf file or a model name")
        if _looks_like_path(text) or "/" in text and not _hub_id(text):
            raise ModelNotAvailable(f"artifact folder not found: {text}")
    return resolve_model(text, progress=progress)


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~", ".\\")) or spec.count("/") > 1 or "\\" in spec


def _local_folder(request: ModelRequest) -> Path:
    path = Path(request.spec).expanduser()
    if not path.is_dir():
        raise ModelNotAvailable(f"{path} is a file; a model is a folder with config.json and *.safetensors")
    if not (path / "config.json").is_file():
        raise ModelNotAvailable(
            f"{path} is not a model folder: it has no config.json "
            "(expected a Hugging Face folder as written by save_pretrained)"
        )
    return path.resolve()


def _hub_snapshot(request: ModelRequest) -> Path:
    from huggingface_hub import constants, snapshot_download

    spec, trust_remote_code = request.spec, request.trust_remote_code
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


def _exists(spec: str) -> bool:
    return Path(spec).expanduser().exists()


def _hub_id(spec: str) -> bool:
    return not _looks_like_path(spec) and bool(_HUB_ID.match(spec))


def _gguf_file(request: ModelRequest) -> Path:
    return gguf.gguf_folder(Path(request.spec), progress=request.progress)


def _pip_gguf(request: ModelRequest) -> Path:
    name = gguf.short_name(request.spec)
    assert name is not None
    return gguf.gguf_folder(gguf.pip_gguf_file(name), progress=request.progress)


MODEL_SOURCES = SourceTable("model")
for _row in (
    Source("gguf-file", gguf.is_gguf_path, _gguf_file, "a .gguf file"),
    Source("local-folder", _exists, _local_folder, "a local Hugging Face folder"),
    Source(
        "pip-gguf",
        lambda spec: gguf.short_name(spec) is not None,
        _pip_gguf,
        " or ".join(sorted(gguf.PIP_MODELS)) + " (GGUF in a pip package)",
    ),
    Source("hub-id", _hub_id, _hub_snapshot, "a Hugging Face hub id (org/name)"),
):
    MODEL_SOURCES.add(_row)
