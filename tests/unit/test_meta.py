"""Meta-tests: every registered stage has its test, and every shipped recipe validates."""

from __future__ import annotations

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
def test_shipped_recipe_validates(path):
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
