"""The toolkit's user-facing errors, and pydantic errors turned into one line per problem.

A recipe error names the path of the offending key the way a user writes it
(`stages[1].prune.heads: must be < 1`), never pydantic's location tuples or its
"Value error, " prefixes.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError


class RecipeError(Exception):
    """A recipe (file, overrides or stage order) that cannot run; one line per problem."""

    def __init__(self, lines: str | Sequence[str]):
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        super().__init__("\n".join(self.lines))


class StageFailed(Exception):
    """A stage raised while running; `message` is one line, the traceback is in error.log."""

    def __init__(self, index: int, name: str, message: str, log: str | None = None):
        self.index, self.name, self.message, self.log = index, name, message, log
        super().__init__(f"stage {index:02d}-{name} failed: {message}")


class ModelNotAvailable(Exception):
    """A model spec (builtin name, local folder, hub id, GGUF file) cannot be turned into a loadable folder.

    The message names the spec and says what is missing and what to do about it.
    """


class BackendUnavailable(Exception):
    """The requested runtime backend cannot run this artifact here; the message says why and what to do."""


Loc = tuple[int | str, ...]


def format_path(loc: Sequence[int | str]) -> str:
    """('stages', 1, 'prune', 'heads') -> 'stages[1].prune.heads'."""
    out = ""
    for el in loc:
        if isinstance(el, int):
            out += f"[{el}]"
        else:
            out += f".{el}" if out else str(el)
    return out or "(top level)"


def _clean_loc(loc: Loc, raw: Any) -> list[int | str]:
    """Drop pydantic's union/validator tags from `loc` by walking the input that was validated."""
    out: list[int | str] = []
    cur = raw
    for i, el in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(el, int) and isinstance(cur, dict):  # a non-string mapping key
            out.append(str(el))
            cur = cur.get(el)
        elif isinstance(el, int):
            out.append(el)
            cur = cur[el] if isinstance(cur, list) and -len(cur) <= el < len(cur) else None
        elif isinstance(cur, dict) and el in cur:
            out.append(el)
            cur = cur[el]
        elif last and isinstance(cur, dict) and el != "[key]":
            out.append(el)  # a missing required field
        # else: a tag such as 'function-after[...]', 'int', 'TruncateConfig' or '[key]': skip
    return out


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `X`, `X | None`, `list[X]`, `dict[str, X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is None and not isinstance(annotation, types.UnionType):
        return None
    for arg in reversed(typing.get_args(annotation)):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _model_at(cls: type[BaseModel] | None, path: Sequence[int | str]) -> type[BaseModel] | None:
    for el in path:
        if cls is None:
            return None
        if isinstance(el, str):
            field = cls.model_fields.get(el)
            cls = _unwrap_model(field.annotation) if field else None
    return cls


def _unknown_key_message(cls: type[BaseModel] | None, key: str) -> str:
    if cls is None:
        return "unknown key"
    fields = list(cls.model_fields)
    close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean '{close[0]}'?)"
    return f"unknown key (expected one of: {', '.join(fields)})"


_PATHY = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*|\[\d+\])*): (.+)$", re.S)


def _message(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if err.get("type") == "missing":
        return "required key is missing"
    msg = re.sub(r"Input should be a valid dictionary or instance of \w+", "must be a mapping", msg)
    value = err.get("input")
    if err.get("type") not in ("value_error", "assertion_error") and isinstance(value, (str, int, float, bool)):
        shown = repr(value)
        if len(shown) <= 40:
            msg += f" (got {shown})"
    return msg


def validation_lines(
    exc: ValidationError, raw: Any, prefix: Sequence[int | str] = (), cls: type[BaseModel] | None = None
) -> list[str]:
    """One line per distinct problem of a pydantic ValidationError, paths prefixed by `prefix`."""
    lines: list[str] = []
    for err in exc.errors():
        loc = _clean_loc(tuple(err["loc"]), raw)
        if err["type"] == "extra_forbidden":
            msg = _unknown_key_message(_model_at(cls, loc[:-1]), str(loc[-1]) if loc else "")
        else:
            msg = _message(err)
            inner = _PATHY.match(msg)  # a model validator naming a sub-key: "segment_weights.cot: ..."
            if inner and err["type"] == "value_error":
                loc = loc + inner.group(1).replace("[", ".[").split(".")
                loc = [int(p[1:-1]) if p.startswith("[") else p for p in loc if p]
                msg = inner.group(2)
        line = f"{format_path([*prefix, *loc])}: {' '.join(msg.split())}"
        if line not in lines:
            lines.append(line)
    return lines
