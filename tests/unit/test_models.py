"""Model resolution (builtin / local folder / hub id), safetensors-only loading, builtin models."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from slm_toolkit.core.errors import ModelNotAvailable
from slm_toolkit.demo import builtin
from slm_toolkit.demo.task import generate_examples
from slm_toolkit.demo.tokenizer import build_demo_tokenizer
from slm_toolkit.models.load import load_model
from slm_toolkit.models.resolve import resolve_model


@pytest.fixture()
def tiny_folder(tmp_path):
    tok = build_demo_tokenizer()
    arch = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32)
    model = builtin.build_model(arch, tok, max_positions=64, seed=0)
    folder = tmp_path / "tiny"
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder, model


# -- resolve ---------------------------------------------------------------------------------
def test_resolve_local_folder(tiny_folder):
    folder, _ = tiny_folder
    assert resolve_model(str(folder), task={}) == folder.resolve()


def test_resolve_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailable, match="no config.json"):
        resolve_model(str(tmp_path / "empty"), task={})


def test_resolve_missing_folder(tmp_path):
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        resolve_model(str(tmp_path / "nope"), task={})
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        resolve_model("./no/such/model/here", task={})


def test_resolve_hub_id_not_cached(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotAvailable, match="not in the local Hugging Face cache and the hub is not reachable"):
        resolve_model("some-org/some-model", task={})


def test_resolve_hub_id_from_the_local_cache(monkeypatch, tmp_path, tiny_folder):
    """A hub id found in the Hugging Face cache layout resolves to its snapshot folder."""
    import shutil

    from huggingface_hub import constants

    folder, _ = tiny_folder
    repo = tmp_path / "hub" / "models--some-org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(folder, repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    path = resolve_model("some-org/tiny", task={})
    assert path == repo / "snapshots" / ("0" * 40)
    assert load_model(path)[0].config.hidden_size == 16


def test_resolve_unknown_builtin():
    with pytest.raises(ModelNotAvailable, match="builtin:arith-teacher"):
        resolve_model("builtin:nope", task={})


def test_unknown_prefix_lists_every_source():
    with pytest.raises(ModelNotAvailable, match="unknown model source 'foo' in 'foo:bar'") as err:
        resolve_model("foo:bar")
    for known in ("a .gguf file", "a local Hugging Face folder", "smollm2", "hub id", "builtin:arith-teacher"):
        assert known in str(err.value)


def test_model_table_order_and_the_demo_row():
    from slm_toolkit.models.resolve import MODEL_SOURCES

    with pytest.raises(ModelNotAvailable):
        resolve_model("builtin:nope")  # loads the plugins
    names = [r.name for r in MODEL_SOURCES.rows]
    assert names[:4] == ["gguf-file", "local-folder", "pip-gguf", "hub-id"] and "demo-builtin" in names[4:]


def test_resolve_artifact_keeps_folders_and_names_missing_ones(tmp_path):
    from slm_toolkit.models.resolve import resolve_artifact

    (tmp_path / "onnx").mkdir()  # any artifact folder (ONNX, TensorRT) is taken as it is
    assert resolve_artifact(tmp_path / "onnx") == tmp_path / "onnx"
    with pytest.raises(ModelNotAvailable, match="artifact folder not found"):
        resolve_artifact(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotAvailable, match="is a file"):
        resolve_artifact(tmp_path / "weights.bin")


# -- load ------------------------------------------------------------------------------------
def test_load_model_round_trip(tiny_folder):
    folder, model = tiny_folder
    loaded, tok = load_model(folder)
    assert not loaded.training
    ids = torch.tensor([[1, 7, 8, 9]])
    assert torch.allclose(loaded(ids).logits, model.eval()(ids).logits, atol=1e-6)
    assert tok("1+2")["input_ids"] == build_demo_tokenizer()("1+2")["input_ids"]


def test_load_refuses_pickle_weights(tiny_folder):
    folder, model = tiny_folder
    (folder / "model.safetensors").unlink()
    torch.save({}, folder / "pytorch_model.bin")
    with pytest.raises(ModelNotAvailable, match="only pickle weights"):
        load_model(folder)


# -- builtin ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "task",
    [
        dict(steps=4, digits=1, ops="+-", verify=0),
        dict(steps=3, digits=2, ops="+-*", verify=2),
        dict(steps=5, digits=1, ops="*", verify=3),
    ],
)
def test_format_example_reproduces_the_demo_task(task):
    """The easy-operand student data uses data.demo.format_example: it must reproduce demo examples exactly."""
    from slm_toolkit.demo.task import _parse

    for ex in generate_examples(50, 3, **task):
        first, moves = _parse(ex.prompt)
        assert builtin.format_example(first, moves, task["verify"]) == ex


def test_easy_examples_cover_every_step_count_with_small_operands():
    from slm_toolkit.demo.task import _parse, solve

    exs = builtin.easy_examples(300, 0, steps=4, digits=1, ops="+-", verify=1)
    steps = set()
    for ex in exs:
        first, moves = _parse(ex.prompt)
        steps.add(len(moves))
        assert all(b <= 2 for _, b in moves)
        assert str(solve(ex.prompt)) == ex.answer and "check:" in ex.cot
    assert steps == {1, 2, 3, 4}


def test_recipe_hash_covers_task_and_steps():
    base = builtin.recipe_hash(builtin.builtin_recipe("arith-teacher", {}))
    assert base == builtin.recipe_hash(builtin.builtin_recipe("arith-teacher", {"steps": 4}))  # defaults filled
    assert base != builtin.recipe_hash(builtin.builtin_recipe("arith-teacher", {"verify": 1}))
    assert base != builtin.recipe_hash(builtin.builtin_recipe("arith-teacher", {}, steps=5))
    assert base != builtin.recipe_hash(builtin.builtin_recipe("arith-student", {}))
    with pytest.raises(ValueError):
        builtin.builtin_recipe("arith-teacher", {"steps": 0})


@pytest.fixture()
def small_training(monkeypatch):
    monkeypatch.setitem(
        builtin.TRAINING, "arith-student", dict(builtin.TRAINING["arith-student"], pool=256, batch_size=16, steps=5)
    )
    monkeypatch.setattr(builtin, "HELDOUT_N", 16)


def test_builtin_trains_once_and_round_trips(small_training, monkeypatch):
    task = {"steps": 2}
    path = resolve_model("builtin:arith-student", task=task, seed=7, progress=False)
    meta = json.loads((path / "slm_meta.json").read_text())
    assert meta["kind"] == "hf" and meta["task"]["steps"] == 2 and meta["builtin"]["training"]["steps"] == 5
    assert 0.0 <= meta["metrics"]["accuracy"] <= 1.0 and meta["metrics"]["params"] > 0
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.model_input_names == ["input_ids", "attention_mask"]
    assert model.config.num_key_value_heads == 2 and model.config.eos_token_id == tok.eos_token_id
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left

    def no_training(*a, **k):
        raise AssertionError("trained again instead of using the cache")

    monkeypatch.setattr(builtin, "_train_into", no_training)
    assert resolve_model("builtin:arith-student", task=task, progress=False) == path
    assert builtin.builtin_model("arith-student", task={"steps": 2, "verify": 0}, progress=False) == path


def test_killed_training_leaves_no_cache_entry(small_training, monkeypatch):
    import slm_toolkit.demo.train_lm as train_lm

    def crash(*a, **k):
        raise KeyboardInterrupt

    import os

    from slm_toolkit.core import paths

    root = builtin.builtin_recipe("arith-student", {"steps": 1}, 3)
    final = paths.cache_dir() / "builtin" / f"arith-student-{builtin.recipe_hash(root)}"
    stale = final.parent / f".{final.name}.killed.tmp"  # what a SIGKILLed training leaves
    stale.mkdir(parents=True)
    os.utime(stale, (0, 0))
    monkeypatch.setattr(train_lm, "train_causal_lm", crash)
    with pytest.raises(KeyboardInterrupt):
        builtin.builtin_model("arith-student", task={"steps": 1}, steps=3, progress=False)
    assert not final.exists()
    assert not [p for p in final.parent.iterdir() if p.name.startswith(f".{final.name}")]


def test_builtin_sizes():
    tok = build_demo_tokenizer()
    from slm_toolkit.measures.metrics import count_parameters

    teacher = count_parameters(builtin.build_model(builtin.ARCH["arith-teacher"], tok, 128, 0))
    student = count_parameters(builtin.build_model(builtin.ARCH["arith-student"], tok, 128, 0))
    assert 0.8e6 < teacher < 1.2e6
    assert 4 <= teacher / student <= 8
