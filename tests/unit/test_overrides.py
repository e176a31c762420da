"""`key.path=value` overrides: applied to the raw recipe before validation."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from slm_toolkit.cli import app
from slm_toolkit.core.errors import RecipeError
from slm_toolkit.recipe import apply_overrides, load_recipe, parse_recipe

RAW = {
    "name": "t",
    "model": "builtin:arith-teacher",
    "stages": [{"distill": {"truncate": {"fraction": 0.5}}}, {"evaluate": None}],
}


def test_values_are_yaml_scalars_and_paths_nest():
    raw = apply_overrides(
        RAW,
        [
            "seed=3",
            "stages.0.distill.truncate.fraction=0.25",
            "stages.0.distill.supervise=[cot]",
            "stages.1.evaluate.limit=7",
            "trust_remote_code=true",
            "data.task.ops=+-*",
            "stages.-1.evaluate.reference=null",
        ],
    )
    assert raw["seed"] == 3
    assert raw["stages"][0]["distill"]["truncate"]["fraction"] == 0.25
    assert raw["stages"][0]["distill"]["supervise"] == ["cot"]
    assert raw["stages"][1]["evaluate"] == {"limit": 7, "reference": None}  # null settings become a mapping
    assert raw["trust_remote_code"] is True
    assert raw["data"] == {"task": {"ops": "+-*"}}  # missing mappings are created
    assert RAW["stages"][0]["distill"]["truncate"]["fraction"] == 0.5  # the input is not mutated

    recipe = parse_recipe(raw)
    assert recipe.seed == 3
    assert recipe.stages[0].config.truncate.fraction == 0.25
    assert recipe.stages[1].config.limit == 7
    assert recipe.data.task.ops == "+-*"


def test_string_values_stay_strings():
    raw = apply_overrides(RAW, ["model=org/name", "name=run-2"])
    assert raw["model"] == "org/name" and raw["name"] == "run-2"


def test_whole_stage_replaced_by_index():
    raw = apply_overrides(RAW, ["stages.1={evaluate: {limit: 2}}"])
    assert parse_recipe(raw).stages[1].config.limit == 2


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("stages.2.evaluate.limit=1", "stages has 2 entries; index 2 does not exist"),
        ("stages.-3.evaluate.limit=1", "index -3 does not exist"),
        ("stages.first.evaluate.limit=1", "stages is a list; use an index, not 'first'"),
        ("stages.0.prune.heads=0.5", "stages[0] is 'distill', not 'prune'"),
        ("name.x=1", "name is a string, it has no key 'x'"),
        ("stages.0.distill.truncate.fraction.x=1", "is a number"),
        ("seed", "expected key.path=value"),
        ("=3", "expected key.path=value"),
        ("stages..distill=1", "empty key in the path"),
        ("seed=[1", "the value is not valid YAML"),
    ],
)
def test_invalid_paths(override, fragment):
    with pytest.raises(RecipeError) as info:
        apply_overrides(RAW, [override])
    assert len(info.value.lines) == 1
    assert info.value.lines[0].startswith(f"override '{override}': ")
    assert fragment in info.value.lines[0]


def test_override_values_are_validated_like_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: t\nmodel: m\nstages:\n  - distill: {}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["stages.0.distill.truncate.fraction=2"])
    assert info.value.lines == [
        "stages[0].distill.truncate.fraction: must be in (0, 1) (omit `truncate` for full sequences)"
    ]
    with pytest.raises(RecipeError, match=r"^seed: "):
        load_recipe(path, ["seed=three"])
    assert load_recipe(path, ["stages.0.distill.truncate.fraction=0.25", "seed=3"]).seed == 3


def test_cli_validate_with_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text("name: t\nmodel: m\nstages:\n  - distill: {}\n  - evaluate: {}\n")
    ok = CliRunner().invoke(app, ["validate", "r.yaml", "stages.0.distill.truncate.fraction=0.25", "seed=3"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(app, ["validate", "r.yaml", "stages.5.distill.epochs=1"])
    assert bad.exit_code == 2
    assert "index 5 does not exist" in bad.stderr
