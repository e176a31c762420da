"""Strict YAML for recipes: safe loading, duplicate keys rejected, errors with line numbers.

PyYAML silently keeps the last of two equal keys in a mapping; a recipe with `epochs: 1` and,
further down, `epochs: 5` would run with 5 and nobody would notice. We compose the node tree
first, check every mapping for duplicates (reporting the key's path and both lines), then
construct plain Python objects with PyYAML's SafeLoader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from slm_toolkit.core.errors import RecipeError, format_path


class StrictLoader(yaml.SafeLoader):
    """SafeLoader (no arbitrary Python objects); duplicates are checked on the node tree."""


def _key_text(node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return node.value
    return None  # complex keys are not used by recipes; the schema rejects them later


def _check_duplicates(node: yaml.Node, path: list[int | str], lines: list[str]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = _key_text(key_node)
            line = key_node.start_mark.line + 1
            if key is not None and key in seen:
                lines.append(f"{format_path([*path, key])}: duplicate key (line {line}; first at line {seen[key]})")
            elif key is not None:
                seen[key] = line
            _check_duplicates(value_node, [*path, key if key is not None else "?"], lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, [*path, i], lines)


def loads(text: str, source: str = "recipe") -> Any:
    """Parse YAML text strictly; raise RecipeError (one line each) on syntax errors or duplicates."""
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        dups: list[str] = []
        _check_duplicates(node, [], dups)
        if dups:
            raise RecipeError(dups)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}: line {mark.line + 1}, column {mark.column + 1}" if mark else source
        problem = exc.problem or exc.context or "invalid YAML"
        raise RecipeError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: YAML error: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()


def load_file(path: Path | str) -> Any:
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise RecipeError(f"{path}: recipe file {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a UTF-8 text file") from None
    return loads(text, source=str(path))


def dumps(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
