"""Loaders: builtin demo (disjoint eval), JSONL formats, folders, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from slm_toolkit.core import sources
from slm_toolkit.data.config import DataConfig
from slm_toolkit.data.example import DataBundle, Example
from slm_toolkit.data.loaders import DATA_SOURCES, detect_format, load_data, load_jsonl_examples

GSM8K = Path(__file__).resolve().parents[1] / "fixtures" / "gsm8k"  # invented problems in GSM8K's format


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def fields_rows(n: int) -> list[dict]:
    return [{"prompt": f"p{i}", "cot": f"c{i}", "answer": i} for i in range(n)]


def test_builtin_demo_is_deterministic_sized_and_eval_is_disjoint():
    task = {"steps": 3, "digits": 1, "ops": "+-", "verify": 1}
    a = load_data("builtin:arith-cot", "auto", 2000, 300, 7, task)
    assert (len(a.train), len(a.eval)) == (2000, 300)
    assert a == load_data("builtin:arith-cot", "auto", 2000, 300, 7, task)
    assert not {e.prompt for e in a.train} & {e.prompt for e in a.eval}
    assert len({e.prompt for e in a.eval}) == 300
    assert all(e.cot.count("check:") == 1 and len(e.prompt) == 8 for e in a.train + a.eval)
    assert a.options["task"] == task
    assert load_data("builtin:arith-cot", "auto", 50, 10, 8, task).train != a.train[:50]


def test_builtin_demo_with_too_few_problems():
    with pytest.warns(UserWarning, match="only"):
        bundle = load_data("builtin:arith-cot", "auto", 30, 100, 0, {"steps": 1, "ops": "+"})
    assert 0 < len(bundle.eval) < 100
    with pytest.raises(ValueError, match="too few distinct problems"):
        load_data("builtin:arith-cot", "auto", 2000, 10, 0, {"steps": 1, "ops": "+"})
    with pytest.raises(ValueError):
        load_data("builtin:arith-cot", "auto", 10, 10, 0, {"steps": 99})
    with pytest.raises(ValueError, match="unknown builtin"):
        load_data("builtin:nope", "auto", 10, 10, 0)


def test_fields_format_and_file_split(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", fields_rows(30))
    examples = load_jsonl_examples(path, "fields")
    assert examples[3] == Example("p3", "c3", "3")
    assert load_jsonl_examples(path) == examples  # auto detects fields
    bundle = load_data(str(path), "auto", 20, 5, 1, None)
    assert (len(bundle.train), len(bundle.eval)) == (20, 5)
    assert not set(bundle.train) & set(bundle.eval)
    assert bundle.train == load_data(str(path), "fields", 20, 5, 1, None).train
    assert bundle.eval != load_data(str(path), "fields", 20, 5, 2, None).eval  # shuffled by the seed


def test_fewer_examples_than_asked_warns_and_one_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", fields_rows(10))
    with pytest.warns(UserWarning, match="has 10 examples"):
        bundle = load_data(str(path), "auto", 100, 8, 0, None)
    assert (len(bundle.train), len(bundle.eval)) == (2, 8)
    with pytest.warns(UserWarning):
        assert len(load_data(str(path), "auto", 1, 500, 0, None).eval) == 9  # eval-only use keeps all but one
    with pytest.raises(ValueError, match="need at least 2"):
        load_data(str(write_jsonl(tmp_path / "one.jsonl", fields_rows(1))), "auto", 1, 1, 0, None)


def test_gsm8k_format_keeps_annotations():
    examples = load_jsonl_examples(GSM8K / "train.jsonl")  # auto-detected as gsm8k
    assert len(examples) == 60
    first = examples[0]
    assert first.prompt.startswith("Marta baked 72 muffins for the school fair.")
    assert first.cot == (
        "Before noon she sold 72/2 = <<72/2=36>>36 muffins.\nIn the afternoon she sold 72-36 = <<72-36=36>>36 muffins."
    )
    assert first.answer == "36"
    assert all(e.answer and "####" not in e.cot and not e.cot.endswith("\n") for e in examples)
    assert any("€" in e.prompt for e in examples)  # non-ASCII text survives


def test_gsm8k_folder():
    bundle = load_data(str(GSM8K), "gsm8k", 40, 12, 0, None)
    assert (len(bundle.train), len(bundle.eval)) == (40, 12)
    test_prompts = {e.prompt for e in load_jsonl_examples(GSM8K / "test.jsonl")}
    assert all(e.prompt in test_prompts for e in bundle.eval)
    assert bundle.options == {"format": "gsm8k", "seed": 0}


def test_full_gsm8k_file_keeps_annotations(gsm8k_full):
    examples = load_jsonl_examples(gsm8k_full / "train.jsonl")
    assert len(examples) == 7473
    first = examples[0]
    assert first.prompt.startswith("Natalia sold clips to 48 of her friends")
    assert first.cot == (
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May."
    )
    assert first.answer == "72"
    assert all(e.answer and "####" not in e.cot and not e.cot.endswith("\n") for e in examples)
    bundle = load_data(str(gsm8k_full), "gsm8k", 40, 12, 0, None)
    assert (len(bundle.train), len(bundle.eval)) == (40, 12)


def test_think_format_variants(tmp_path):
    rows = [
        {"prompt": "2+2?", "completion": "<think>\n2 plus 2 is 4\n</think>\n\n4"},
        {"question": "3+3?", "response": "3 and 3 make 6</think>6"},
        {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think>easy</think>2"}]},
    ]
    examples = load_jsonl_examples(write_jsonl(tmp_path / "t.jsonl", rows), "think")
    assert examples == [
        Example("2+2?", "2 plus 2 is 4", "4"),
        Example("3+3?", "3 and 3 make 6", "6"),
        Example("1+1?", "easy", "2"),
    ]
    assert detect_format(rows[0]) == "think" and detect_format(rows[2]) == "think"
    assert load_jsonl_examples(write_jsonl(tmp_path / "a.jsonl", rows[:1]))[0].answer == "4"


def test_folder_with_train_and_test(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", fields_rows(20))
    write_jsonl(tmp_path / "test.jsonl", [{"prompt": "q", "cot": "c", "answer": "a"}] * 3)
    bundle = load_data(str(tmp_path), "auto", 10, 3, 0, None)
    assert len(bundle.train) == 10 and bundle.eval == [Example("q", "c", "a")] * 3
    (tmp_path / "test.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="must hold train.jsonl and one of test.jsonl"):
        load_data(str(tmp_path), "auto", 10, 3, 0, None)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_data(str(tmp_path / "missing.jsonl"), "auto", 1, 1, 0, None)
    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_jsonl_examples(tmp_path / "missing.jsonl")
    bad = write_jsonl(tmp_path / "bad.jsonl", [fields_rows(1)[0], "", '{"prompt": "x",'])
    with pytest.raises(ValueError, match=r"bad.jsonl:3: not valid JSON"):
        load_jsonl_examples(bad)
    with pytest.raises(ValueError, match=r":2: missing field 'cot' for format 'fields'"):
        load_jsonl_examples(
            write_jsonl(tmp_path / "m.jsonl", [fields_rows(1)[0], {"prompt": "p", "answer": "a"}]), "fields"
        )
    with pytest.raises(ValueError, match="no final '#### x' line"):
        load_jsonl_examples(write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "no marker"}]), "gsm8k")
    with pytest.raises(ValueError, match="no '</think>'"):
        load_jsonl_examples(write_jsonl(tmp_path / "t.jsonl", [{"prompt": "q", "completion": "<think>x"}]), "think")
    with pytest.raises(ValueError, match="cannot detect the data format"):
        load_jsonl_examples(write_jsonl(tmp_path / "u.jsonl", [{"text": "hello"}]))
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_jsonl_examples(write_jsonl(tmp_path / "l.jsonl", ["[1, 2]"]))
    with pytest.raises(ValueError, match="the file is empty"):
        load_jsonl_examples(write_jsonl(tmp_path / "e.jsonl", []))
    with pytest.raises(ValueError, match="unknown data format"):
        load_data(str(bad), "csv", 1, 1, 0, None)


def test_fingerprint_covers_every_example():
    a = load_data(str(GSM8K), "gsm8k", 40, 12, 0, None)
    assert a.fingerprint() == load_data(str(GSM8K), "gsm8k", 40, 12, 0, None).fingerprint()
    changed = [Example(e.prompt, e.cot, e.answer) for e in a.train]
    changed[-1] = Example(changed[-1].prompt, changed[-1].cot + " ", changed[-1].answer)  # the last one, not [:3]
    assert DataBundle(changed, a.eval, a.source).fingerprint() != a.fingerprint()
    evals = list(a.eval)
    evals[5] = Example(evals[5].prompt, evals[5].cot, "0")
    assert DataBundle(a.train, evals, a.source).fingerprint() != a.fingerprint()
    assert DataBundle(a.train[:20], a.train[20:] + a.eval, a.source).fingerprint() != a.fingerprint()  # the split too


# -- the source table and the demo's entry point -------------------------------------------
def test_demo_registers_through_its_entry_point():
    (ep,) = [ep for ep in entry_points(group=sources.ENTRY_POINT_GROUP) if ep.name == "demo"]
    assert ep.value == "slm_toolkit.demo.sources:register"
    assert [r.name for r in DATA_SOURCES.rows][:2] == ["jsonl-file", "jsonl-folder"]  # library rows first
    load_data("builtin:arith-cot", "auto", 4, 2, 0, {})
    assert "demo-builtin" in [r.name for r in DATA_SOURCES.rows]


def test_library_does_not_import_the_demo_until_a_builtin_spec_needs_it(tmp_path):
    """The library imports no plugin; the plugins load once, lazily, for a spec the library lacks."""
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fields_rows(4)))
    code = f"""
import sys
from slm_toolkit.data.loaders import load_data
from slm_toolkit.models.resolve import resolve_model
import slm_toolkit.recipe, slm_toolkit.pipeline
load_data({str(tmp_path / "d.jsonl")!r}, "auto", 2, 2, 0)
assert not [m for m in sys.modules if m.startswith("slm_toolkit.demo")], "demo imported early"
load_data("builtin:arith-cot", "auto", 2, 2, 0)
assert "slm_toolkit.demo.sources" in sys.modules
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_plugins_load_once_and_a_broken_one_names_itself(monkeypatch):
    calls = []

    class EP:
        def __init__(self, name, fn):
            self.name, self.value, self._fn = name, f"tests:{name}", fn

        def load(self):
            return self._fn

    def register():
        calls.append(1)
        DATA_SOURCES.add(sources.Source("test-x", sources.prefix("x:"), lambda s, **k: "X", "x:data"))

    monkeypatch.setattr(sources, "_loaded", False)
    monkeypatch.setattr(sources, "entry_points", lambda group: [EP("x", register)])
    monkeypatch.setattr(DATA_SOURCES, "_rows", list(DATA_SOURCES.rows))
    assert load_data("x:anything", "auto", 1, 1, 0) == "X"
    assert load_data("x:again", "auto", 1, 1, 0) == "X" and calls == [1]
    with pytest.raises(FileNotFoundError, match="x:data"):
        load_data("y:nothing", "auto", 1, 1, 0)

    def broken():
        raise ImportError("no module named foo")

    monkeypatch.setattr(sources, "_loaded", False)
    monkeypatch.setattr(sources, "entry_points", lambda group: [EP("bad", broken)])
    with pytest.raises(RuntimeError, match="plugin 'bad' .* failed to load: no module named foo"):
        load_data("z:data", "auto", 1, 1, 0)


def test_data_config_checks_a_plugin_source():
    assert DataConfig(source="builtin:arith-cot").source == "builtin:arith-cot"
    with pytest.raises(ValueError, match="unknown builtin data 'builtin:nope'"):
        DataConfig(source="builtin:nope")
    assert DataConfig(source="some/folder/not/checked/yet").source  # paths are checked when loaded


def test_data_source_expands_environment_variables(tmp_path, monkeypatch):
    from pydantic import ValidationError

    from slm_toolkit.data.config import DataConfig

    monkeypatch.setenv("SLM_TEST_DATA", str(tmp_path))
    assert DataConfig(source="$SLM_TEST_DATA", format="gsm8k").source == str(tmp_path)
    assert DataConfig(source="${SLM_TEST_DATA}/x.jsonl").source == f"{tmp_path}/x.jsonl"
    monkeypatch.delenv("SLM_TEST_DATA")
    with pytest.raises(ValidationError, match=r"names \$SLM_TEST_DATA, which is not set"):
        DataConfig(source="$SLM_TEST_DATA", format="gsm8k")
