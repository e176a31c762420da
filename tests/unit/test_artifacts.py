"""Artifact folders: slm_meta.json, kind detection, content hash, atomic folder writes."""

from __future__ import annotations

import json
import os

import pytest

from slm_toolkit.core.artifacts import (
    KIND_TABLE,
    META_FILE,
    Kind,
    artifact_kind,
    atomic_dir,
    hash_folder,
    read_meta,
    replace_dir,
    write_json_atomic,
    write_meta,
)


def test_meta_round_trip_and_replace(tmp_path):
    assert read_meta(tmp_path) == {}
    write_meta(tmp_path, kind="hf", stage="prune", parent="01-distill", metrics={"params": 10})
    assert read_meta(tmp_path) == {"kind": "hf", "stage": "prune", "parent": "01-distill", "metrics": {"params": 10}}
    write_meta(tmp_path, kind="onnx")
    assert read_meta(tmp_path) == {"kind": "onnx"}
    assert [p.name for p in tmp_path.iterdir()] == ["slm_meta.json"]  # no temporary file left
    assert oct((tmp_path / "slm_meta.json").stat().st_mode & 0o777) != oct(0o600)  # not private


@pytest.mark.parametrize(
    ("files", "kind"),
    [
        (["config.json", "model.safetensors"], "hf"),
        (["config.json", "model.onnx"], "onnx"),
        (["model.engine", "config.json"], "tensorrt"),
    ],
)
def test_kind_from_files(tmp_path, files, kind):
    for name in files:
        (tmp_path / name).write_text("x")
    assert artifact_kind(tmp_path) == kind


def test_kind_from_meta_wins(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    write_meta(tmp_path, kind="tensorrt")
    assert artifact_kind(tmp_path) == "tensorrt"


@pytest.mark.parametrize("kind", list(Kind))
def test_kind_round_trips_through_slm_meta(tmp_path, kind):
    (tmp_path / "config.json").write_text("{}")
    write_meta(tmp_path, kind=kind, stage="x")
    assert json.loads((tmp_path / META_FILE).read_text())["kind"] == kind.value  # the plain value on disk
    back = artifact_kind(tmp_path)
    assert back is kind and back == kind.value and f"{back}" == str(back) == kind.value


def test_kind_table_covers_every_kind():
    assert set(KIND_TABLE) == set(Kind)
    assert [k for k in Kind if k.hf_folder] == [Kind.HF, Kind.HF_QUANTIZED]


def test_a_quantized_folder_is_known_only_from_its_meta(tmp_path):
    """Old folders without a kind are sniffed (never as hf-quantized); a folder we wrote says what it is."""
    (tmp_path / "config.json").write_text('{"quantization_config": {"quant_method": "torchao"}}')
    (tmp_path / "model.safetensors").write_text("x")
    assert artifact_kind(tmp_path) is Kind.HF
    write_meta(tmp_path, kind="hf-quantized", quant_format="torchao")
    assert artifact_kind(tmp_path) is Kind.HF_QUANTIZED


def test_unknown_kind_in_meta_is_named(tmp_path):
    write_meta(tmp_path, kind="gguf")
    with pytest.raises(ValueError, match="unknown kind 'gguf'.*hf, hf-quantized, onnx, tensorrt"):
        artifact_kind(tmp_path)


def test_kind_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        artifact_kind(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a model artifact"):
        artifact_kind(tmp_path)


def test_hash_depends_on_names_and_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "sub").mkdir(parents=True)
        (folder / "x.bin").write_bytes(b"123")
        (folder / "sub" / "y.txt").write_text("hello")
    assert hash_folder(a) == hash_folder(b)
    (b / "sub" / "y.txt").write_text("hellp")
    assert hash_folder(a) != hash_folder(b)
    (b / "sub" / "y.txt").write_text("hello")
    (b / "x.bin").rename(b / "z.bin")
    assert hash_folder(a) != hash_folder(b)
    with pytest.raises(FileNotFoundError):
        hash_folder(tmp_path / "nope")


def test_atomic_dir_renames_on_success(tmp_path):
    final = tmp_path / "03-export"
    with atomic_dir(final) as tmp:
        assert tmp.parent == tmp_path and tmp != final
        (tmp / "model.onnx").write_text("m")
        assert not final.exists()  # nothing looks complete before the block ends
    assert (final / "model.onnx").read_text() == "m"
    assert [p.name for p in tmp_path.iterdir()] == ["03-export"]


def test_atomic_dir_replaces_an_old_folder(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_removes_the_temporary_folder_on_error(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_replace_dir_and_json(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_json_atomic(src / "m.json", {"a": 1})
    replace_dir(src, tmp_path / "dst")
    assert (tmp_path / "dst" / "m.json").read_text().strip().startswith("{")
    assert not src.exists()
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "dst").iterdir())
    assert os.listdir(tmp_path) == ["dst"]
