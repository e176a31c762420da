"""Tables of sources: how a spec from a recipe (a model, a data set) becomes something loadable.

A table is a list of rows, each a predicate on the spec and a resolver. The library fills its
own rows (local folders, GGUF files, hub ids, JSONL files); other packages add rows through the
`slm_toolkit.sources` entry-point group, e.g. in their pyproject.toml:

    [project.entry-points."slm_toolkit.sources"]
    demo = "slm_toolkit.demo.sources:register"

Each entry point names a function without arguments that adds rows to the tables it serves.
They are loaded once, lazily: only when a spec matches none of the library's rows. So the
library never imports the packages that extend it, and resolving a local folder never
imports them either. A plugin's rows are matched after the library's, so they cannot change
what a library spec means; give them a prefix (`builtin:`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "slm_toolkit.sources"


@dataclass(frozen=True)
class Source:
    """One row: `matches(spec)` says whether the row handles the spec, `resolve` handles it."""

    name: str
    matches: Callable[[str], bool]
    resolve: Callable[..., Any]
    describe: str = ""  # what a user writes, for error messages ("builtin:arith-cot")
    check: Callable[[str], None] | None = None  # static validation (recipe check): raises ValueError


def prefix(p: str) -> Callable[[str], bool]:
    """A predicate matching specs that start with `p` (e.g. "builtin:")."""
    return lambda spec: spec.startswith(p)


class SourceTable:
    """The rows of one vocabulary (model specs, data specs), library rows first."""

    def __init__(self, what: str):
        self.what = what
        self._rows: list[Source] = []

    def add(self, row: Source) -> None:
        """Add a row, replacing an earlier row of the same name (registering twice is harmless)."""
        self._rows = [r for r in self._rows if r.name != row.name] + [row]

    @property
    def rows(self) -> list[Source]:
        return list(self._rows)

    def find(self, spec: str) -> Source | None:
        """The first row matching `spec`; the plugins are loaded when no row matches yet."""
        row = self._match(spec)
        if row is None:
            load_plugins()
            row = self._match(spec)
        return row

    def known(self) -> str:
        """What users can write, from every row (plugins loaded), for error messages."""
        load_plugins()
        return ", ".join(r.describe for r in self._rows if r.describe)

    def _match(self, spec: str) -> Source | None:
        return next((r for r in self._rows if r.matches(spec)), None)


_lock = threading.Lock()
_loaded = False


def load_plugins() -> bool:
    """Call every `slm_toolkit.sources` entry point once; True when this call loaded them."""
    global _loaded
    if _loaded:
        return False
    with _lock:
        if _loaded:
            return False
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                register = ep.load()
                register()
            except Exception as exc:  # a broken plugin names itself, then the error propagates
                raise RuntimeError(
                    f"the {ENTRY_POINT_GROUP} plugin {ep.name!r} ({ep.value}) failed to load: {exc}"
                ) from exc
        _loaded = True
        return True
