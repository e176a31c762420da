"""What the server learns from the artifact folder before it loads the model.

- `model_ids`: the id `/v1/models` lists and every name a client may send for it.
- `reasoning_marker`: the marker (e.g. `<think>`) the model was trained to find after the chat
  prompt, from `slm_meta.json` ("reasoning_marker", inherited along the "parent" lineage; the
  demo world's builtin models are trained with `<think>`). None for any other model: its chat
  prompt is exactly its own chat template's.
- `batch_invariant`: False when the model's numerics mix the rows of a batch (ONNX dynamic int8
  computes one activation scale over the whole batch tensor; bitsandbytes LLM.int8 picks outlier
  columns over the batch); the engine then runs every sequence on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slm_toolkit.core.artifacts import read_meta

DEMO_MARKER = "<think>"  # the demo world's format: <bos> prompt <think> cot </think> answer <eos>
# ONNX ops that quantize activations with one scale per tensor, computed at run time
_BATCH_MIXING_OPS = {"DynamicQuantizeLinear", "DynamicQuantizeMatMul"}
_BATCH_MIXING_SCHEMES = {"ort_int8_dynamic", "bnb_int8"}
_MAX_LINEAGE = 32


@dataclass(frozen=True)
class ModelIds:
    served: str  # listed by /v1/models and written in every response's "model"
    accepted: frozenset[str]  # what a request's "model" may say


def model_ids(artifact: Path | str, name: str | None = None, also: Path | None = None) -> ModelIds:
    """The served id is `name` (--model-name) or the artifact's name as the user wrote it (e.g.
    `final` for `runs/x/final`, `smollm2` for a model spec); the path as given, the resolved
    folder's name and path (and those of `also`, the folder a spec was converted into) are
    accepted too, so `"model": "final"` works when `final` is a symlink to a stage folder."""
    given = Path(artifact)
    resolved = given.resolve()
    served = name or given.name or resolved.name
    accepted = {served, given.name, str(artifact), str(given), resolved.name, str(resolved)}
    if also is not None:
        accepted |= {Path(also).name, str(also), Path(also).resolve().name, str(Path(also).resolve())}
    return ModelIds(served, frozenset(a for a in accepted if a))


def _lineage(folder: Path):
    """(folder, meta) from the artifact up through its "parent" links while they exist."""
    seen = set()
    for _ in range(_MAX_LINEAGE):
        meta = read_meta(folder) if folder.is_dir() else {}
        yield folder, meta
        parent = meta.get("parent")
        if not parent:
            return
        nxt = Path(parent)
        if not nxt.is_absolute():  # the pipeline writes parents relative to the run folder
            nxt = next((a / nxt for a in folder.resolve().parents if (a / nxt).is_dir()), nxt)
        key = str(nxt.resolve()) if nxt.exists() else str(nxt)
        if key in seen or not nxt.is_dir():
            return
        seen.add(key)
        folder = nxt


def reasoning_marker(artifact: Path) -> str | None:
    for _, meta in _lineage(Path(artifact)):
        if "reasoning_marker" in meta:
            return meta["reasoning_marker"] or None
        if meta.get("stage") == "builtin" or "builtin" in meta:
            return DEMO_MARKER
    return None


def batch_invariant(artifact: Path) -> bool:
    folder = Path(artifact)
    meta = read_meta(folder)
    if meta.get("scheme") in _BATCH_MIXING_SCHEMES:
        return False
    model = folder / "model.onnx"
    if not model.is_file():
        return True
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    return not any(n.op_type in _BATCH_MIXING_OPS for n in graph.node)
