"""Runs inside the onnxruntime-genai environment: load a genai model folder, then answer one JSON
line per request ({"ids": [[...]], "new_tokens": n}) after generating exactly n tokens per row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime_genai as og


def set_threads(folder: Path, threads: int) -> None:
    path = folder / "genai_config.json"
    cfg = json.loads(path.read_text())
    opts = cfg["model"]["decoder"].setdefault("session_options", {})
    opts["intra_op_num_threads"] = threads
    opts["inter_op_num_threads"] = 1
    path.write_text(json.dumps(cfg, indent=2))


def generate(model, ids: np.ndarray, new_tokens: int) -> None:
    params = og.GeneratorParams(model)
    total = ids.shape[1] + new_tokens
    params.set_search_options(max_length=total, min_length=total, do_sample=False, batch_size=ids.shape[0])
    gen = og.Generator(model, params)
    gen.append_tokens(ids.astype(np.int32))
    while not gen.is_done():
        gen.generate_next_token()


def main() -> None:
    folder, threads = Path(sys.argv[1]), int(sys.argv[2])
    set_threads(folder, threads)
    config = og.Config(str(folder))
    config.clear_providers()
    model = og.Model(config)
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            generate(model, np.asarray(req["ids"]), int(req["new_tokens"]))
            print(json.dumps({"ok": True}), flush=True)
        except Exception as exc:  # reported to the parent, which records the row's error
            print(json.dumps({"error": repr(exc)}), flush=True)


if __name__ == "__main__":
    main()
