"""The engines of the real-model benchmark, each behind the toolkit's Generator surface.

Every engine has `generate(prompts, GenerationConfig)` (greedy; exactly N tokens with
min_new_tokens = max_new_tokens and ignore_eos) and `eos_token_id`; speed and exact match use
only that. Quality uses `slm_toolkit.measures.scoring`: the toolkit's own generators are scored
through the protocol; the peers bring `teacher_forced(prefixes, continuations)` (scoring.py's
contract) where their runtime can score, so perplexity and agreement are computed by one code
path for every row.

slm_torch_fp32 / slm_ort_*   the toolkit's runtime (runtime.loader.load_generator)
hf_generate_fp32             transformers' generate; scored by the same weights' forward pass
optimum_ort_int8             optimum's ORTModelForCausalLM (generate; forward pass for scores)
ort_genai_int4               onnxruntime-genai's generator on its model builder's int4 folder
llama_cpp                    llama-cpp-python on the original GGUF, in its own venv (llama_worker.py)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slm_toolkit.measures import scoring
from slm_toolkit.runtime.base import GenerationConfig

HERE = Path(__file__).resolve().parent


class _Peer:
    """Special tokens from the model's config.json, as the toolkit's generators read them."""

    backend = "peer"

    def _special(self, config: dict, generation: dict | None = None) -> None:
        eos = (generation or {}).get("eos_token_id", config.get("eos_token_id"))
        self.eos_token_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        self.eos_token_id = self.eos_token_ids[0] if self.eos_token_ids else None
        pad = config.get("pad_token_id")
        self.pad_token_id = int(pad if pad is not None else (self.eos_token_id or 0))
        self.max_length = int(config.get("max_position_embeddings") or 2048)

    def close(self) -> None:
        pass


def _read(folder: Path, name: str) -> dict:
    path = Path(folder) / name
    return json.loads(path.read_text()) if path.is_file() else {}


def slm(folder: Path, backend: str, threads: int) -> Any:
    """The toolkit's generator (its own decode loop; ONNX through the fused graph when possible)."""
    from slm_toolkit.runtime.loader import load_generator

    return load_generator(folder, backend=backend, threads=threads)


class HFGenerate(_Peer):
    """transformers' `generate` on the fp32 folder; scores come from the same weights' forward pass."""

    def __init__(self, folder: Path, threads: int):
        import torch
        from transformers import AutoModelForCausalLM

        from slm_toolkit.runtime.torch import TorchGenerator

        torch.set_num_threads(threads)
        self.torch, self.threads = torch, threads
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self._special(_read(folder, "config.json"), _read(folder, "generation_config.json"))
        self.scorer = TorchGenerator(self.model)

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> list[list[int]]:
        self.torch.set_num_threads(self.threads)
        return _hf_style_generate(self.torch, self.model, prompts, config, self)

    def teacher_forced(self, prefixes, continuations):
        return scoring.teacher_forced(self.scorer, prefixes, continuations)


class OptimumOrt(_Peer):
    """optimum's ORTModelForCausalLM (its generate loop) over an ONNX folder."""

    def __init__(self, folder: Path, threads: int):
        import torch
        from optimum.onnxruntime import ORTModelForCausalLM

        from slm_toolkit.runtime.ort_common import session_options

        self.torch = torch
        self.model = ORTModelForCausalLM.from_pretrained(
            folder, session_options=session_options(threads), provider="CPUExecutionProvider"
        )
        self._special(_read(folder, "config.json"), _read(folder, "generation_config.json"))

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> list[list[int]]:
        return _hf_style_generate(self.torch, self.model, prompts, config, self)

    def teacher_forced(self, prefixes, continuations):
        out = []
        for p, c in zip(prefixes, continuations):  # one sequence per pass: no padding to get wrong
            if not len(c):
                out.append((np.zeros(0), np.zeros(0, dtype=np.int64)))
                continue
            ids = self.torch.tensor([list(p) + list(c)])
            logits = self.model(input_ids=ids, attention_mask=self.torch.ones_like(ids), use_cache=False).logits
            out.append(_rows_to_scores(logits[0, len(p) - 1 : len(p) + len(c) - 1].float().numpy(), c))
        return out


class GenaiInt4(_Peer):
    """onnxruntime-genai's generator (batch 1) on a folder written by its model builder."""

    def __init__(self, folder: Path, threads: int, hf_folder: Path):
        import onnxruntime_genai as og

        cfg_path = Path(folder) / "genai_config.json"
        cfg = json.loads(cfg_path.read_text())
        opts = cfg["model"]["decoder"].setdefault("session_options", {})
        opts.update(intra_op_num_threads=threads, inter_op_num_threads=1)
        cfg_path.write_text(json.dumps(cfg, indent=2))
        config = og.Config(str(folder))
        config.clear_providers()
        self.og, self.model = og, og.Model(config)
        self._special(_read(hf_folder, "config.json"), _read(hf_folder, "generation_config.json"))

    def _generator(self, total: int, min_total: int = 0):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=total, min_length=min_total, do_sample=False, batch_size=1)
        return self.og.Generator(self.model, params)

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> list[list[int]]:
        out = []
        for p in prompts:
            total = len(p) + config.max_new_tokens
            gen = self._generator(total, total if config.ignore_eos else len(p) + config.min_new_tokens)
            gen.append_tokens(np.asarray([p], dtype=np.int32))
            new: list[int] = []
            while not gen.is_done() and len(new) < config.max_new_tokens:
                gen.generate_next_token()
                tok = int(gen.get_next_tokens()[0])
                if tok in self.eos_token_ids and not config.ignore_eos:
                    break
                new.append(tok)
            out.append(new)
        return out

    def teacher_forced(self, prefixes, continuations):
        out = []
        for p, c in zip(prefixes, continuations):
            rows = []
            gen = self._generator(len(p) + len(c) + 1)
            gen.append_tokens(np.asarray([p], dtype=np.int32))
            for tok in c:
                rows.append(np.asarray(gen.get_logits(), dtype=np.float32).reshape(-1))
                gen.append_tokens(np.asarray([[tok]], dtype=np.int32))
            out.append(_rows_to_scores(np.stack(rows) if rows else np.zeros((0, 1)), c))
        return out


class LlamaCpp(_Peer):
    """llama-cpp-python on the GGUF file, in the benchmark-only venv (a subprocess worker)."""

    def __init__(self, python: Path, gguf: Path, threads: int, hf_folder: Path):
        self.proc = subprocess.Popen(
            [str(python), str(HERE / "llama_worker.py"), str(gguf), str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        ready = self.proc.stdout.readline()
        if not ready.startswith("ready"):
            raise RuntimeError(f"llama.cpp worker failed to start: {ready!r}")
        self._special(_read(hf_folder, "config.json"), _read(hf_folder, "generation_config.json"))

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        reply = json.loads(self.proc.stdout.readline())
        if "error" in reply:
            raise RuntimeError(f"llama.cpp worker: {reply['error']}")
        return reply

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> list[list[int]]:
        eos = [] if config.ignore_eos else list(self.eos_token_ids)
        reply = self._ask(
            {
                "op": "generate",
                "prompts": [list(map(int, p)) for p in prompts],
                "max_new": config.max_new_tokens,
                "min_new": config.min_new_tokens,
                "eos": eos,
            }
        )
        return reply["tokens"]

    def teacher_forced(self, prefixes, continuations):
        reply = self._ask(
            {
                "op": "score",
                "prefixes": [list(map(int, p)) for p in prefixes],
                "continuations": [list(map(int, c)) for c in continuations],
            }
        )
        return [
            (np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.int64))
            for a, b in zip(reply["logp"], reply["greedy"])
        ]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _rows_to_scores(rows: np.ndarray, targets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Logit rows [n, V] predicting `targets`: (log-probability of each target, greedy token)."""
    if not len(targets):
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    x = rows.astype(np.float64)
    lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    return x[np.arange(len(targets)), list(targets)] - lse, x.argmax(-1).astype(np.int64)


def _hf_style_generate(torch: Any, model: Any, prompts, config: GenerationConfig, peer: _Peer) -> list[list[int]]:
    """transformers-style `generate`, one prompt at a time (batch 1, as measured), greedy."""
    out = []
    for p in prompts:
        ids = torch.tensor([list(p)])
        n_min = config.max_new_tokens if config.ignore_eos else config.min_new_tokens
        with torch.inference_mode():
            seq = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=config.max_new_tokens,
                min_new_tokens=n_min,
                do_sample=False,
                pad_token_id=peer.pad_token_id,
                eos_token_id=None if config.ignore_eos else list(peer.eos_token_ids),
            )
        new = seq[0, len(p) :].tolist()
        if not config.ignore_eos and new and new[-1] in peer.eos_token_ids:
            new = new[:-1]
        out.append(new)
    return out


def python_of(path: str | None) -> Path | None:
    """An interpreter path that exists, else None."""
    if not path:
        return None
    p = Path(path)
    return p if p.is_file() else None


if __name__ == "__main__":  # pragma: no cover
    sys.exit("import this module; run.py is the benchmark")
