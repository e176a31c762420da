"""The benchmark's artifacts, built once into a work folder with the toolkit's own functions.

teacher        `smollm2`: the pip-shipped Q4_1 GGUF dequantized to an fp32 Hugging Face folder
               (models.resolve, cached by the toolkit)
teacher ONNX   fp32 export (models.onnx_export), int8 and int4 (quantize.ort, as the recipe's stages)
genai int4     onnxruntime-genai's model builder on the teacher folder, run by an interpreter that
               has it and transformers 5 (its builder's requirement): --genai-python, else the
               environment benchmarks/inference/genai_env.py creates
students       read from recipe run folders (manifest.json): the pruned model, the healed
               (distilled) model of each run, and the run's int8 / int4 ONNX artifacts; int8
               (dynamic), int8w (weight-only MatMulNBits) and int4 are quantized here from the
               run's ONNX export when the run made none
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from slm_toolkit.models.onnx_export import export_onnx
from slm_toolkit.quantize.ort import quantize_onnx

HERE = Path(__file__).resolve().parent
_SIDE_FILES = (".json", ".jinja", ".txt", ".model")
# the student's quantized rows: model name -> the toolkit's scheme
STUDENT_SCHEMES = {"int8": "ort_int8_dynamic", "int8w": "ort_int8_weight", "int4": "ort_int4"}
_ROW_OF_SCHEME = {scheme: row for row, scheme in STUDENT_SCHEMES.items()}
MADE_FROM = "made_from.json"  # what a quantized folder was made from (not part of the model)


def teacher_folder() -> Path:
    from slm_toolkit.models.resolve import resolve_model

    return Path(resolve_model("smollm2", progress=True))


def gguf_file() -> Path:
    from slm_toolkit.models import gguf

    return Path(gguf.pip_gguf_file("smollm2"))


def onnx_set(hf: Path, root: Path) -> dict[str, Path]:
    """{"fp32", "int8", "int4"}: folders under root, built when missing."""
    out = {"fp32": root / "onnx_fp32", "int8": root / "onnx_int8", "int4": root / "onnx_int4"}
    if not (out["fp32"] / "model.onnx").is_file():
        _fresh(out["fp32"])
        export_onnx(hf, out["fp32"], optimize="none")
    for fmt, scheme in (("int8", "ort_int8_dynamic"), ("int4", "ort_int4")):
        quantized(out["fp32"], out[fmt], scheme)
    return out


def quantized(src: Path, dst: Path, scheme: str) -> Path:
    """dst = `scheme` of src, rebuilt when src changed since dst was made (a new run's export)."""
    made_from = dst / MADE_FROM
    source = {"src": str(Path(src).resolve()), "scheme": scheme, "stat": _stat(Path(src) / "model.onnx")}
    if (dst / "model.onnx").is_file() and (not made_from.is_file() or json.loads(made_from.read_text()) != source):
        shutil.rmtree(dst)
    if not (dst / "model.onnx").is_file():
        tmp = dst.with_name(dst.name + ".tmp")
        _fresh(tmp)
        quantize_onnx(src, tmp, scheme, block_size=32)
        for f in src.iterdir():
            if f.suffix in _SIDE_FILES and not (tmp / f.name).exists() and f.name != "slm_meta.json":
                shutil.copy2(f, tmp / f.name)
        (tmp / made_from.name).write_text(json.dumps(source))
        _fresh(dst)
        tmp.rename(dst)
    return dst


def _stat(f: Path) -> list[int]:
    st = f.stat()
    return [st.st_size, st.st_mtime_ns]


def genai_int4(hf: Path, root: Path, python: Path | None) -> tuple[Path | None, str | None]:
    """(folder, None) or (None, why not)."""
    out = root / "genai_int4"
    if (out / "genai_config.json").is_file():
        return out, None
    if python is None:
        sys.path.insert(0, str(HERE.parent / "inference"))
        import genai_env

        python, why = genai_env.ensure_env(root / "genai-venv")
        if python is None:
            return None, why
    cmd = [str(python), "-m", "onnxruntime_genai.models.builder", "-m", str(hf), "-i", str(hf), "-o", str(out)]
    cmd += ["-p", "int4", "-e", "cpu", "-c", str(root / "genai-cache")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0 or not (out / "genai_config.json").is_file():
        return None, f"onnxruntime-genai's builder failed: {(res.stderr or res.stdout)[-300:]}"
    return out, None


def run_artifacts(run_dir: Path) -> dict[str, object]:
    """What a recipe run made: {"pruned", "healed", "onnx", "int8", "int4"} folders (when present)
    and {"train": {train_flops, train_cpu_s, peak_memory_mb}} of its (last) distill stage."""
    manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
    found: dict[str, object] = {}
    for rec in manifest["stages"]:
        if rec.get("status") not in ("completed", "skipped") or not rec.get("artifact"):
            continue
        folder = Path(run_dir) / rec["artifact"]
        name, cfg = rec["name"], rec.get("config") or {}
        if name == "prune":
            found["pruned"] = folder
        elif name == "distill":
            found["healed"] = folder
            m, t = rec.get("metrics") or {}, rec.get("timings") or {}
            found["train"] = {
                "train_flops": m.get("flops"),
                "train_cpu_s": t.get("train_cpu_s"),
                "peak_memory_mb": m.get("peak_memory_mb"),
            }
        elif name == "export" and cfg.get("format", "onnx") == "onnx":
            found["onnx"] = folder
        elif name == "quantize" and cfg.get("scheme") in _ROW_OF_SCHEME:
            found[_ROW_OF_SCHEME[cfg["scheme"]]] = folder
    return found


def student_onnx(found: dict[str, object], root: Path) -> dict[str, object]:
    """Add the int8, int8w and int4 of the run's ONNX export that the run did not make."""
    if "onnx" in found:
        for fmt, scheme in STUDENT_SCHEMES.items():
            if fmt not in found:
                found[fmt] = quantized(Path(found["onnx"]), root / f"student_{fmt}", scheme)
    return found


def _fresh(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
