"""The recipe: a strict pydantic model, loaded from YAML, with `key.path=value` overrides.

    name: quickstart
    seed: 0
    model: builtin:arith-teacher
    data: {source: builtin:arith-cot, train: 20000, eval: 500}
    stages:
      - distill: {student: builtin:arith-student, truncate: {fraction: 0.5}}
      - evaluate: {}

Everything is validated before anything runs: the top-level keys, every stage's config (its
class comes from the explicit registry, slm_toolkit.registry.STAGES) and the order of stages
(each stage must accept the artifact kind the previous one produces). Every problem becomes a
RecipeError line naming its path: `stages[1].prune.heads: must be < 1`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator

from slm_toolkit.core import yamlio
from slm_toolkit.core.artifacts import Kind, artifact_kind
from slm_toolkit.core.errors import RecipeError, format_path, validation_lines
from slm_toolkit.data.config import DataConfig
from slm_toolkit.registry import STAGES

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class StageEntry(BaseModel):
    """One validated stage of a recipe: its registry name and its typed config."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str
    config: SerializeAsAny[BaseModel]
    input_kind: Kind = Kind.HF
    output_kind: Kind = Kind.HF


class RecipeHeader(BaseModel):
    """The recipe's top-level keys except `stages` (validated separately, one stage at a time)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    seed: int = 0
    model: str
    data: DataConfig = Field(default_factory=DataConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    run_dir: str | None = None
    trust_remote_code: bool = False
    # CPU threads for torch and onnxruntime (null = one per core). Tiny models gain little from
    # more threads, and on a busy machine extra threads spin and slow everything down.
    threads: int | None = None

    @field_validator("threads")
    @classmethod
    def _threads(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be >= 1 (or null for one per core)")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _SAFE_NAME.match(v):
            raise ValueError(
                "must be a folder name: letters, digits, '.', '_' or '-' (at most 100, not starting with '.' or '-')"
            )
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v == "cuda":  # torch is imported only when CUDA is asked for
            import torch

            if not torch.cuda.is_available():
                raise ValueError("cuda was asked for, but no CUDA device is available here (use auto or cpu)")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a local folder, a .gguf file, a hub id or a plugin's name (builtin:<name>)")
        return v


class Recipe(RecipeHeader):
    stages: list[StageEntry] = Field(min_length=1)


# ---------------------------------------------------------------------------------------------
# Loading


def load_recipe(path: Path | str, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe file. Raises RecipeError; writes nothing."""
    raw = yamlio.load_file(path)
    source = str(path)
    if raw is None:
        raise RecipeError(f"{source}: the recipe is empty (expected a mapping with name, model, stages)")
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{source}: the top level must be a mapping (name, model, data, stages), not a {_yaml_type(raw)}"
        )
    raw = apply_overrides(raw, overrides)
    return parse_recipe(raw)


def parse_recipe(raw: dict[str, Any]) -> Recipe:
    """Validate a raw recipe dict (already overridden) into a Recipe, or raise RecipeError."""
    lines: list[str] = []
    head_raw = {k: v for k, v in raw.items() if k != "stages"}
    header = None
    try:
        header = RecipeHeader.model_validate(head_raw)
    except ValidationError as exc:
        lines += validation_lines(exc, head_raw, cls=RecipeHeader)
    stages = _parse_stages(raw.get("stages"), "stages" in raw, lines)
    if not lines and header is not None:
        lines += _check_order(stages, header.model)
    if lines:
        raise RecipeError(lines)
    return Recipe(**header.model_dump(), stages=stages)  # type: ignore[union-attr]


def _parse_stages(raw: Any, present: bool, lines: list[str]) -> list[StageEntry]:
    if not present:
        lines.append("stages: required key is missing (a list such as `- evaluate: {}`)")
        return []
    if not isinstance(raw, list) or not raw:
        what = "an empty list" if raw == [] else f"a {_yaml_type(raw)}"
        lines.append(f"stages: must be a non-empty list of stages, not {what}")
        return []
    out: list[StageEntry] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or len(entry) != 1:
            lines.append(_entry_problem(i, entry))
            continue
        ((name, cfg_raw),) = entry.items()
        spec = STAGES.get(name) if isinstance(name, str) else None
        if spec is None:
            lines.append(_unknown_stage(i, name, STAGES))
            continue
        cfg_raw = {} if cfg_raw is None else cfg_raw
        if not isinstance(cfg_raw, dict):
            lines.append(
                f"stages[{i}].{name}: the stage's settings must be a mapping "
                f"(e.g. `{name}: {{}}`), not a {_yaml_type(cfg_raw)}"
            )
            continue
        try:
            cfg = spec.config.model_validate(cfg_raw)
        except ValidationError as exc:
            lines += validation_lines(exc, cfg_raw, prefix=("stages", i, name), cls=spec.config)
            continue
        except (ImportError, AttributeError):
            raise  # a broken stage module is a bug to see in full, not a recipe error
        except Exception as exc:  # a validator that raised something other than ValueError
            lines.append(f"stages[{i}].{name}: {' '.join(str(exc).split())}")
            continue
        out.append(StageEntry(name=name, config=cfg))
    return out


def _entry_problem(i: int, entry: Any) -> str:
    if isinstance(entry, dict) and not entry:
        return f"stages[{i}]: empty stage (expected one key, the stage name, e.g. `- evaluate: {{}}`)"
    if isinstance(entry, dict):
        keys = ", ".join(str(k) for k in entry)
        return (
            f"stages[{i}]: a stage is a mapping with exactly one key, the stage name; got {keys} "
            "(indent the settings under the name)"
        )
    if isinstance(entry, str):
        return f"stages[{i}]: write the stage as a mapping: `- {entry}: {{}}`"
    return f"stages[{i}]: a stage must be a mapping `{{<stage>: {{...}}}}`, not a {_yaml_type(entry)}"


def _unknown_stage(i: int, name: Any, stages: dict[str, Any]) -> str:
    known = sorted(stages)
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else f"known stages: {', '.join(known)}"
    return f"stages[{i}].{name}: unknown stage ({hint})"


def _model_kind(model: str) -> Kind:
    """The artifact kind of the recipe's model: that of a local folder (a quantized one says so in
    its slm_meta.json), else a HF model (a .gguf file, a hub id, a plugin's model)."""
    path = Path(model).expanduser()
    if path.is_dir():
        try:
            return artifact_kind(path)
        except ValueError:
            return Kind.HF
    return Kind.HF


def _check_order(stages: list[StageEntry], model: str) -> list[str]:
    """Each stage must accept the kind of artifact its input is; fill in input/output kinds."""
    lines: list[str] = []
    kind, source = _model_kind(model), "the recipe's model"
    for i, entry in enumerate(stages):
        spec = STAGES[entry.name]
        path = format_path(["stages", i, entry.name])
        if kind not in spec.accepts:
            accepts = " or ".join(sorted(spec.accepts))
            lines.append(f"{path}: accepts {accepts} artifacts, but its input is {kind} (from {source})")
            return lines
        try:
            out_kind = spec.output_kind(entry.config, kind)
        except ValueError as exc:
            lines.append(f"{path}: {' '.join(str(exc).split())}")
            return lines
        entry.input_kind, entry.output_kind = kind, out_kind
        kind, source = out_kind, path
    return lines


def _yaml_type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


# ---------------------------------------------------------------------------------------------
# Overrides: `stages.0.distill.truncate.fraction=0.25 seed=3`


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides to a raw recipe dict (values parsed as YAML scalars)."""
    import copy

    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override '{item}': expected key.path=value (e.g. seed=3)")
        try:
            value = yamlio.loads(text, source=f"override '{item}'") if text.strip() else None
        except RecipeError as exc:
            raise RecipeError(f"override '{item}': the value is not valid YAML ({exc.lines[0]})") from None
        _set_path(raw, key.strip().split("."), value, item)
    return raw


def _set_path(raw: dict[str, Any], parts: list[str], value: Any, item: str) -> None:
    cur: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = format_path(_as_loc(parts[:depth])) or "the recipe"
        if not part:
            raise RecipeError(f"override '{item}': empty key in the path")
        if isinstance(cur, list):
            if not re.fullmatch(r"-?\d+", part):
                raise RecipeError(f"override '{item}': {where} is a list; use an index, not '{part}'")
            idx = int(part)
            if not -len(cur) <= idx < len(cur):
                raise RecipeError(f"override '{item}': {where} has {len(cur)} entries; index {idx} does not exist")
            if last:
                cur[idx] = value
                return
            if cur[idx] is None:
                cur[idx] = {}
            cur = cur[idx]
        elif isinstance(cur, dict):
            _check_stage_name(cur, parts, depth, item)
            if last:
                cur[part] = value
                return
            if cur.get(part) is None:
                cur[part] = {}
            cur = cur[part]
        else:
            raise RecipeError(f"override '{item}': {where} is a {_yaml_type(cur)}, it has no key '{part}'")


def _check_stage_name(cur: dict[str, Any], parts: list[str], depth: int, item: str) -> None:
    """`stages.0.distill.x=...` where stage 0 is not `distill`: say so instead of adding a key."""
    if depth == 2 and parts[0] == "stages" and len(cur) == 1 and parts[depth] not in cur:
        actual = next(iter(cur))
        raise RecipeError(f"override '{item}': stages[{parts[1]}] is '{actual}', not '{parts[depth]}'")


def _as_loc(parts: list[str]) -> list[int | str]:
    return [int(p) if re.fullmatch(r"-?\d+", p) else p for p in parts]


# ---------------------------------------------------------------------------------------------
# The resolved recipe (defaults filled in), written beside every run


def resolved_dict(recipe: Recipe) -> dict[str, Any]:
    head = recipe.model_dump(mode="json", exclude={"stages"})
    head["stages"] = [{s.name: s.config.model_dump(mode="json")} for s in recipe.stages]
    return head


def dump_resolved(recipe: Recipe) -> str:
    return yamlio.dumps(resolved_dict(recipe))
