"""ONNX export through optimum-onnx: one merged decoder with KV cache (model.onnx).

The folder it writes is what optimum's `ORTModelForCausalLM.from_pretrained(folder)` loads with
no extra code, including head-pruned models (see `fix_head_dim`), plus the tokenizer files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

OPTIMIZE_LEVELS = {"none": None, "basic": "O1", "all": "O2"}  # optimum's ORTOptimizer levels
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


def export_onnx(
    src: Path, out: Path, opset: int = 18, optimize: str = "basic", device: str = "cpu", trust_remote_code: bool = False
) -> Path:
    """Export the HF folder `src` into `out` (model.onnx + config + tokenizer); returns model.onnx."""
    from optimum.exporters.onnx import main_export
    from transformers import AutoConfig

    out.mkdir(parents=True, exist_ok=True)
    main_export(
        str(src),
        str(out),
        task="text-generation-with-past",
        opset=opset,
        device=device,
        optimize=OPTIMIZE_LEVELS[optimize],
        do_validation=False,
        trust_remote_code=trust_remote_code,
    )
    model_path = out / "model.onnx"
    if not model_path.exists():
        raise RuntimeError(f"optimum did not write {model_path}; files: {sorted(p.name for p in out.iterdir())}")
    config = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code)
    head_dim = declared_head_dim(config)
    if head_dim is not None:
        fix_head_dim(model_path, head_dim)
    copy_tokenizer(src, out)
    return model_path


def declared_head_dim(config) -> int | None:
    """head_dim when it differs from hidden_size // num_attention_heads (head-pruned models), else None."""
    head_dim = getattr(config, "head_dim", None)
    heads = getattr(config, "num_attention_heads", None)
    if not head_dim or not heads or config.hidden_size // heads == head_dim:
        return None
    return int(head_dim)


def fix_head_dim(model_path: Path, head_dim: int) -> None:
    """Let optimum's ORTModelForCausalLM run a head-pruned export with no extra code.

    optimum sizes the empty first-step cache as hidden_size // num_attention_heads and ignores
    `head_dim` (ENVIRONMENT.md). The graph's past inputs get a symbolic last dimension and a
    Reshape to [batch, kv_heads, past_len, head_dim]: the empty tensor optimum sends has zero
    elements, so the reshape always succeeds; a real cache passes through unchanged (Reshape
    aliases its input in ONNX Runtime, no copy).
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    past = [i for i in graph.input if i.name.startswith("past_key_values.")]
    if not past or any(n.name == "slm_head_dim" for n in graph.initializer):
        return
    graph.initializer.append(numpy_helper.from_array(np.array([head_dim], dtype=np.int64), "slm_head_dim"))
    added = []
    for inp in past:
        name, fixed = inp.name, inp.name + ".slm_fixed"
        for node in graph.node:
            for k, x in enumerate(node.input):
                if x == name:
                    node.input[k] = fixed
        added += [
            helper.make_node("Shape", [name], [name + ".shape3"], start=0, end=3),
            helper.make_node("Concat", [name + ".shape3", "slm_head_dim"], [name + ".shape4"], axis=0),
            helper.make_node("Reshape", [name, name + ".shape4"], [fixed]),
        ]
        dim = inp.type.tensor_type.shape.dim[3]
        dim.ClearField("dim_value")
        dim.dim_param = "past_head_dim"
    for node in reversed(added):
        graph.node.insert(0, node)
    onnx.save(model, str(model_path))


def copy_tokenizer(src: Path, out: Path) -> None:
    """Copy the tokenizer files (optimum copies them only when AutoTokenizer finds one)."""
    for name in TOKENIZER_FILES:
        if (src / name).exists() and not (out / name).exists():
            shutil.copy2(src / name, out / name)
