"""Meta-tests: every registered stage has its test, and every shipped recipe validates."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from slm_toolkit.recipe import load_recipe
from slm_toolkit.registry import ANY, STAGES

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_every_registered_stage_has_a_test():
    missing = [
        f"{name}: {spec.test_module or '(no test_module declared)'}"
        for name, spec in STAGES.items()
        if not spec.test_module or not (ROOT / spec.test_module).is_file()
    ]
    assert not missing, "registered stages without their test file:\n  " + "\n  ".join(missing)


def _unmarked(fn: ast.FunctionDef) -> bool:
    """A test function of the default suite: not marked slow or gpu."""
    return not any(re.search(r"mark\.(slow|gpu)\b", ast.unparse(d)) for d in fn.decorator_list)


def runs_stage(source: str, name: str, run_ref: str) -> bool:
    """Whether a test module's default-suite tests run stage `name`: a test function (not marked
    slow/gpu) calls the stage's run function (imported from its module, at the top or inside the
    function, under any alias, or as `<module>.run`), or runs a recipe or pipeline naming the stage."""
    module, _, attr = run_ref.partition(":")
    package, _, leaf = module.rpartition(".")
    tree = ast.parse(source)
    names: set[str] = set()  # local names of the run function
    modules: set[str] = set()  # local names of its module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == module:
            names |= {a.asname or a.name for a in node.names if a.name == attr}
        elif isinstance(node, ast.ImportFrom) and node.module == package:
            modules |= {a.asname or a.name for a in node.names if a.name == leaf}
        elif isinstance(node, ast.Import):
            modules |= {a.asname for a in node.names if a.name == module and a.asname}
    pipeline = {"run"} if re.search(r"from slm_toolkit\.pipeline import .*\brun\b", source) else set()
    names_stage = re.compile(rf"(^|[\s{{\[-]){re.escape(name)}:")

    def calls_run(call: ast.Call) -> bool:
        f = call.func
        if isinstance(f, ast.Name) and f.id in names:
            return True
        return (
            isinstance(f, ast.Attribute) and f.attr == attr and isinstance(f.value, ast.Name) and f.value.id in modules
        )

    def runs_recipe(fn: ast.FunctionDef, call: ast.Call) -> bool:
        f = call.func
        via_pipeline = (isinstance(f, ast.Name) and f.id in pipeline) or (
            isinstance(f, ast.Attribute) and f.attr == "run" and ast.unparse(f.value) == "pipeline"
        )
        via_cli = isinstance(f, ast.Attribute) and f.attr == "invoke" and '"run"' in ast.unparse(call).replace("'", '"')
        text = [n.value for n in ast.walk(fn) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        return (via_pipeline or via_cli) and any(names_stage.search(t) for t in text)

    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_") and _unmarked(fn):
            for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call)):
                if calls_run(call) or runs_recipe(fn, call):
                    return True
    return False


def test_every_registered_stage_is_run_by_its_test():
    idle = [
        f"{name}: {spec.test_module} never calls {spec.run_ref} in a default-suite test"
        for name, spec in STAGES.items()
        if (ROOT / spec.test_module).is_file()
        and not runs_stage((ROOT / spec.test_module).read_text(encoding="utf-8"), name, spec.run_ref)
    ]
    assert not idle, "registered stages whose test does not run them:\n  " + "\n  ".join(idle)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from slm_toolkit.x.stage import run\ndef test_a():\n    run(cfg, inp)\n", True),
        ("def test_a():\n    from slm_toolkit.x.stage import run as go\n    out = go(cfg, inp)\n", True),
        ("from slm_toolkit.x import stage\ndef test_a():\n    stage.run(cfg, inp)\n", True),
        ("from slm_toolkit.x.stage import run\ndef test_a():\n    assert run\n", False),  # imported, never called
        ("from slm_toolkit.y.stage import run\ndef test_a():\n    run(cfg, inp)\n", False),  # another stage's run
        (
            "from slm_toolkit.x.stage import run\nimport pytest\n@pytest.mark.slow\ndef test_a():\n    run(c, i)\n",
            False,
        ),
        ("from slm_toolkit.x.stage import run\ndef helper():\n    run(c, i)\n", False),  # not in a test
        ("from slm_toolkit.pipeline import run\ndef test_a():\n    run(load('stages:\\n  - x: {}'))\n", True),
        ("from slm_toolkit.pipeline import run\ndef test_a():\n    run(load('stages:\\n  - y: {}'))\n", False),
    ],
)
def test_runs_stage_reads_the_test_module(source, expected):
    assert runs_stage(source, "x", "slm_toolkit.x.stage:run") is expected


def test_every_registered_stage_has_a_strict_config():
    from pydantic import BaseModel

    for name, spec in STAGES.items():
        assert spec.name == name
        assert issubclass(spec.config, BaseModel), name
        assert spec.config.model_config.get("extra") == "forbid", f"{name}: unknown keys must be rejected"
        assert spec.accepts and spec.accepts <= ANY, name


def test_the_quickstart_recipe_ships():
    assert (ROOT / "recipes" / "quickstart.yaml").is_file()


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipe_validates(path, tmp_path, monkeypatch):
    import re

    # a recipe may name its data by a variable (`source: "$SLM_GSM8K"`): give each one a folder
    for name in set(re.findall(r"\$\{?(\w+)", path.read_text())):
        monkeypatch.setenv(name, str(tmp_path))
    recipe = load_recipe(path)
    assert recipe.stages


def test_cli_help_does_not_import_heavy_libraries():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from slm_toolkit.cli import app\n"
        "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'fastapi', 'onnxruntime') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"`slm --help` imports {out.stdout.strip()}"
