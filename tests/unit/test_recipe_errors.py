"""Malformed recipes: each fails before anything runs, with one line naming the path, exit 2,
no traceback, and nothing written (no run folder)."""

from __future__ import annotations

import os
import textwrap

import pytest
from typer.testing import CliRunner

from slm_toolkit.cli import app

GOOD = """\
name: t
model: builtin:arith-teacher
stages:
  - evaluate: {}
"""


def _fp8_available() -> bool:
    from slm_toolkit.quantize.config import fp8_unavailable_reason

    return fp8_unavailable_reason() is None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# (id, recipe text, overrides, expected start of the one error line, expected fragment)
CASES = [
    ("yaml-syntax", "name: t\nmodel: [unclosed\nstages: []\n", [], "recipe.yaml: line 3", "YAML syntax error"),
    ("yaml-tab-indent", "name: t\nstages:\n\t- evaluate: {}\n", [], "recipe.yaml: line 3", "YAML syntax error"),
    ("empty-file", "", [], "recipe.yaml:", "the recipe is empty"),
    ("comments-only", "# nothing here\n", [], "recipe.yaml:", "the recipe is empty"),
    ("top-level-list", "- evaluate: {}\n", [], "recipe.yaml:", "must be a mapping"),
    ("top-level-scalar", "just a string\n", [], "recipe.yaml:", "not a string"),
    ("duplicate-top-key", GOOD + "name: u\n", [], "name: duplicate key", "line 5; first at line 1"),
    (
        "duplicate-nested-key",
        "name: t\nmodel: m\nstages:\n  - evaluate:\n      limit: 1\n      limit: 2\n",
        [],
        "stages[0].evaluate.limit: duplicate key",
        "line 6; first at line 5",
    ),
    ("threads-zero", GOOD + "threads: 0\n", [], "threads:", "must be >= 1"),
    ("missing-name", "model: m\nstages:\n  - evaluate: {}\n", [], "name:", "required key is missing"),
    ("missing-model", "name: t\nstages:\n  - evaluate: {}\n", [], "model:", "required key is missing"),
    ("missing-stages", "name: t\nmodel: m\n", [], "stages:", "required key is missing"),
    ("empty-stages", "name: t\nmodel: m\nstages: []\n", [], "stages:", "non-empty list"),
    ("stages-mapping", "name: t\nmodel: m\nstages: {evaluate: {}}\n", [], "stages:", "not a mapping"),
    ("unknown-top-key", GOOD + "sed: 3\n", [], "sed:", "did you mean 'seed'?"),
    (
        "misspelt-stage",
        "name: t\nmodel: m\nstages:\n  - evalute: {}\n",
        [],
        "stages[0].evalute:",
        "unknown stage (did you mean 'evaluate'?)",
    ),
    (
        "two-keys-entry",
        "name: t\nmodel: m\nstages:\n  - evaluate: {}\n    limit: 3\n",
        [],
        "stages[0]:",
        "exactly one key",
    ),
    ("bare-string-entry", "name: t\nmodel: m\nstages:\n  - evaluate\n", [], "stages[0]:", "- evaluate: {}"),
    (
        "settings-not-mapping",
        "name: t\nmodel: m\nstages:\n  - evaluate: 5\n",
        [],
        "stages[0].evaluate:",
        "must be a mapping",
    ),
    ("wrong-type-seed", GOOD + "seed: abc\n", [], "seed:", "valid integer"),
    ("wrong-type-nested", GOOD + "data: {train: many}\n", [], "data.train:", "valid integer"),
    (
        "wrong-type-list",
        "name: t\nmodel: m\nstages:\n  - distill: {supervise: cot}\n",
        [],
        "stages[0].distill.supervise:",
        "valid list",
    ),
    ("bad-literal", GOOD + "device: tpu\n", [], "device:", "'cuda'"),
    ("unsafe-name", GOOD.replace("name: t", "name: ../evil"), [], "name:", "must be a folder name"),
    (
        "out-of-range",
        "name: t\nmodel: m\nstages:\n  - evaluate: {batch_size: 0}\n",
        [],
        "stages[0].evaluate.batch_size:",
        "must be >= 1",
    ),
    (
        "out-of-range-second-stage",
        "name: t\nmodel: m\nstages:\n  - evaluate: {}\n  - distill:\n      truncate: {fraction: 1.5}\n",
        [],
        "stages[1].distill.truncate.fraction:",
        "must be in (0, 1)",
    ),
    (
        "unknown-stage-key",
        "name: t\nmodel: m\nstages:\n  - distill: {truncate: {fracton: 0.5}}\n",
        [],
        "stages[0].distill.truncate.fracton:",
        "did you mean 'fraction'?",
    ),
    (
        "cross-field",
        "name: t\nmodel: m\nstages:\n  - distill: {supervise: [cot], segment_weights: {answer: 2}}\n",
        [],
        "stages[0].distill.segment_weights.answer:",
        "not in `supervise`",
    ),
    ("bad-demo-ops", GOOD + "data: {task: {ops: '+/'}}\n", [], "data.task.ops:", 'subset of "+-*"'),
    ("bad-data-source", GOOD + "data: {source: 'builtin:nope'}\n", [], "data.source:", "unknown builtin data"),
    (
        "impossible-order",
        "name: t\nmodel: m\nstages:\n  - quantize: {scheme: ort_int8_dynamic}\n",
        [],
        "stages[0].quantize:",
        "exported ONNX artifact",
    ),
    (
        "impossible-order-after-export",
        "name: t\nmodel: m\nstages:\n  - export: {format: onnx}\n  - prune: {heads: 0.25}\n",
        [],
        "stages[1].prune:",
        "its input is onnx",
    ),
    ("missing-file", None, [], "recipe.yaml:", "does not exist"),
    (
        "override-bad-index",
        GOOD,
        ["stages.4.evaluate.limit=3"],
        "override 'stages.4.evaluate.limit=3':",
        "index 4 does not exist",
    ),
    (
        "override-wrong-stage",
        GOOD,
        ["stages.0.distill.epochs=3"],
        "override 'stages.0.distill.epochs=3':",
        "stages[0] is 'evaluate', not 'distill'",
    ),
    ("override-no-equals", GOOD, ["seed"], "override 'seed':", "key.path=value"),
    ("override-through-scalar", GOOD, ["model.x=1"], "override 'model.x=1':", "it has no key 'x'"),
    ("override-bad-value", GOOD, ["stages.0.evaluate.batch_size=-2"], "stages[0].evaluate.batch_size:", "must be >= 1"),
    (
        "override-unknown-key",
        GOOD,
        ["stages.0.evaluate.bacth_size=2"],
        "stages[0].evaluate.bacth_size:",
        "did you mean 'batch_size'?",
    ),
    pytest.param(
        "cuda-without-gpu",
        GOOD + "device: cuda\n",
        [],
        "device:",
        "no CUDA device is available",
        id="cuda-without-gpu",
        marks=pytest.mark.skipif("_cuda_available()", reason="this machine has CUDA"),
    ),
    pytest.param(
        "fp8-without-hardware",
        "name: t\nmodel: m\nstages:\n  - quantize: {scheme: fp8}\n",
        [],
        "stages[0].quantize.scheme:",
        "fp8 needs a CUDA GPU",
        id="fp8-without-hardware",
        marks=pytest.mark.skipif("_fp8_available()", reason="this machine has fp8"),
    ),
]


CASES = [pytest.param(*c, id=c[0]) if type(c) is tuple else c for c in CASES]


@pytest.mark.parametrize(("name", "text", "overrides", "start", "fragment"), CASES)
@pytest.mark.parametrize("command", ["run", "validate"])
def test_malformed_recipe(tmp_path, monkeypatch, command, name, text, overrides, start, fragment):
    monkeypatch.chdir(tmp_path)
    if text is not None:
        (tmp_path / "recipe.yaml").write_text(textwrap.dedent(text))
    before = sorted(os.listdir(tmp_path))

    result = CliRunner().invoke(app, [command, "recipe.yaml", *overrides])

    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines  # one line per problem; each case has exactly one problem
    message = lines[0].removeprefix("recipe error: ").removeprefix("error: ")
    assert message.startswith(start), message
    assert fragment in message, message
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, no runs/ folder


def test_at_least_twenty_kinds():
    assert len(CASES) >= 20


def test_several_problems_are_all_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text("name: t\nmodel: m\nseed: x\nstages:\n  - evalute: {}\n  - evaluate: {limit: 0}\n")
    result = CliRunner().invoke(app, ["validate", "r.yaml"])
    assert result.exit_code == 2
    paths = [ln.removeprefix("recipe error: ").split(":")[0] for ln in result.stderr.splitlines()]
    assert paths == ["seed", "stages[0].evalute", "stages[1].evaluate.limit"]


def test_good_recipe_validates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(GOOD)
    result = CliRunner().invoke(app, ["validate", "r.yaml"])
    assert result.exit_code == 0, result.output
    assert "01-evaluate" in result.stdout
    assert os.listdir(tmp_path) == ["r.yaml"]
