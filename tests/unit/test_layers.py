"""The package's layering, checked on the source (docs/ARCHITECTURE.md, "Layers").

Each module belongs to one layer; a module may import its own layer's modules and those of the
layers below it, never above. Stage packages (distill, prune, quantize, export, evaluate, bench)
share a layer but never import each other: stages do not call each other. No import cycle, at any
depth (imports inside functions count). A project module is imported inside a function only when
it is heavy (it imports torch, transformers, onnxruntime, ... at its top, directly or through
another project module), so that `slm validate` and `slm --help` stay light.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "slm_toolkit"

# Bottom to top. A module's layer is that of the longest prefix listed.
LAYERS: list[tuple[str, list[str]]] = [
    ("core", ["slm_toolkit.core", "slm_toolkit"]),
    ("data", ["slm_toolkit.data"]),
    ("models", ["slm_toolkit.models"]),
    ("runtime", ["slm_toolkit.runtime"]),
    ("measures", ["slm_toolkit.measures"]),
    (
        "stages",
        [
            "slm_toolkit.stage",
            "slm_toolkit.distill",
            "slm_toolkit.prune",
            "slm_toolkit.quantize",
            "slm_toolkit.export",
            "slm_toolkit.evaluate",
            "slm_toolkit.bench",
            "slm_toolkit.demo",
        ],
    ),
    (
        "pipeline",
        [
            "slm_toolkit.registry",
            "slm_toolkit.recipe",
            "slm_toolkit.pipeline",
            "slm_toolkit.report",
            "slm_toolkit.run_folder",
        ],
    ),
    ("apps", ["slm_toolkit.cli", "slm_toolkit.serving"]),
]
# Packages of one layer that must not import each other.
SIBLINGS = {
    "slm_toolkit.distill",
    "slm_toolkit.prune",
    "slm_toolkit.quantize",
    "slm_toolkit.export",
    "slm_toolkit.evaluate",
    "slm_toolkit.bench",
    "slm_toolkit.demo",
}
# Third-party libraries that take seconds to import or are optional.
HEAVY_LIBS = {
    "torch",
    "transformers",
    "onnxruntime",
    "onnx",
    "optimum",
    "torchao",
    "bitsandbytes",
    "tensorrt",
    "torch_pruning",
    "matplotlib",
    "fastapi",
    "uvicorn",
    "starlette",
    "tokenizers",
    "numpy",
    "gguf",
    "onnxruntime_genai",
    "llama_cpp",
    "accelerate",
    "safetensors",
    "prometheus_client",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, bool, int]]:
    """(imported name, at module top?, line) for each import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_nodes = {id(n) for n in tree.body}
    # `if TYPE_CHECKING:` blocks at the top are annotations only
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in ast.walk(node):
                top_nodes.add(id(sub))
    out = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
        for t in targets:
            out.append((t, id(node) in top_nodes, node.lineno))
    return out


def _project(target: str) -> str | None:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _layer(module: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and docs/ARCHITECTURE.md"
    return best


def _sibling(module: str) -> str | None:
    return next((s for s in SIBLINGS if module == s or module.startswith(s + ".")), None)


EDGES = {m: [(t, top, line) for t, top, line in _imports(m, p)] for m, p in MODULES.items()}


def test_every_module_has_a_layer() -> None:
    for m in MODULES:
        _layer(m)


def test_no_upward_or_sideways_import() -> None:
    bad = []
    for m, edges in EDGES.items():
        for target, _, line in edges:
            t = _project(target)
            if t is None or t == m or t == "slm_toolkit":
                continue
            if _layer(t) > _layer(m):
                bad.append(
                    f"{MODULES[m].name}:{line} {m} ({LAYERS[_layer(m)][0]}) imports {t} ({LAYERS[_layer(t)][0]})"
                )
            elif _sibling(m) and _sibling(t) and _sibling(m) != _sibling(t):
                bad.append(f"{m}:{line} imports {t}: stage packages do not import each other")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_no_import_cycle() -> None:
    graph = defaultdict(set)
    for m, edges in EDGES.items():
        for target, _, _ in edges:
            t = _project(target)
            if t and t != m and t != "slm_toolkit" and not MODULES[t].name == "__init__.py":
                graph[m].add(t)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for nxt in sorted(graph[n]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[n] = 2

    for n in sorted(MODULES):
        if n not in state:
            visit(n)


def _heavy_modules() -> set[str]:
    heavy = set()
    changed = True
    while changed:
        changed = False
        for m, edges in EDGES.items():
            if m in heavy:
                continue
            for target, top, _ in edges:
                t = _project(target)
                if top and (target.split(".")[0] in HEAVY_LIBS or (t in heavy)):
                    heavy.add(m)
                    changed = True
                    break
    return heavy


def test_light_project_modules_are_imported_at_the_top() -> None:
    heavy = _heavy_modules()
    bad = []
    for m, edges in EDGES.items():
        for target, top, line in edges:
            t = _project(target)
            if t is None or top or t in heavy or t == m:
                continue
            if MODULES[t].name == "__init__.py":
                continue
            bad.append(f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports light module {t} inside a function")
    assert not bad, "move these imports to the top of the file:\n" + "\n".join(bad)
