"""fp8 vs bf16 on one CUDA GPU of compute capability >= 8.9 (run by benchmarks/gpu/run.sh).

Measures, in one process:
- accuracy on the demo task (exact match, greedy) of the builtin teacher in fp32, bf16 and fp8,
  the fp8 model made by the quantize stage's own code (torchao Float8 dynamic activation +
  weight, per row), saved to safetensors and reloaded from disk as the stage does;
- decode throughput (Hugging Face `generate`, eager, greedy, exactly `--new-tokens` tokens after
  a `--prompt-len`-token prompt) at batch 1 and 64, bf16 vs fp8, for the demo teacher and for
  `llama_1b` (hidden 2048, 16 layers, 32 heads / 8 KV heads, MLP 8192, vocab 32000, random
  weights: speed does not depend on them), plus prefill latency of one prompt batch.
  Variants are interleaved repeat by repeat after warm-up; median and spread (p75 - p25).

Self-checks (exit code 1 with the reason): every quantized linear weight is a torchao
Float8Tensor, the fp8 logits stay close to bf16, the bf16 teacher actually solves the task, all
figures are finite. Without CUDA or with compute capability < 8.9: exit code 2 and a message.
Eager mode is what a user of `generate` gets; at batch 1 the per-kernel launch overhead hides part
of fp8's halved weight bytes, and the extra activation-quantization kernels can make fp8 slower:
the table says which, it does not assume.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

LLAMA_1B = dict(
    hidden_size=2048,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=8192,
    vocab_size=32000,
    max_position_embeddings=4096,
)


# `--smoke-cpu` (a check of this script on a machine without a GPU, not a measurement): the same
# code paths on the CPU, with torchao's int8 W8A8 standing in for fp8 and tiny sizes.
DEVICE = "cuda"
LOW = "fp8"  # the quantization scheme under test
LOW_TENSOR = "Float8Tensor"


class CheckFailed(Exception):
    pass


def preflight() -> dict:
    """The environment, or exit 2 with what is missing."""
    try:
        import torch
    except ImportError:
        _die("PyTorch is not importable: this benchmark needs a CUDA build of torch >= 2.11")
    if not torch.cuda.is_available():
        _die(
            "no CUDA GPU is visible to PyTorch: this benchmark needs a CUDA GPU of compute capability "
            ">= 8.9 (L4, L40S, H100, H200, B200); it measures nothing on a CPU"
        )
    cc = torch.cuda.get_device_capability()
    if tuple(cc) < (8, 9):
        _die(f"{torch.cuda.get_device_name()} has compute capability {cc[0]}.{cc[1]}; fp8 needs >= 8.9")
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("torchao", "transformers", "tokenizers", "pydantic", "safetensors"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            _die(
                f"{name} is not importable here: carry the pinned wheels (benchmarks/gpu/fetch_wheels.sh) "
                "or pip install -e . in this environment"
            )
    return {"gpu": torch.cuda.get_device_name(), "capability": f"{cc[0]}.{cc[1]}", **versions}


def _die(message: str) -> None:
    print(f"fp8_vs_bf16: {message}", file=sys.stderr)
    sys.exit(2)


def smoke_setup() -> dict:
    global DEVICE, LOW, LOW_TENSOR, LLAMA_1B
    import torch

    DEVICE, LOW, LOW_TENSOR = "cpu", "int8_dynamic", "Int8Tensor"
    LLAMA_1B = dict(
        LLAMA_1B,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=256,
        vocab_size=512,
    )
    print(
        "fp8_vs_bf16: --smoke-cpu: checking the script on the CPU with int8_dynamic for fp8; "
        "the figures are NOT an fp8 measurement",
        file=sys.stderr,
    )
    return {"gpu": "none (smoke-cpu)", "capability": "n/a", "torch": torch.__version__}


# -- accuracy on the demo task ------------------------------------------------------------------
def accuracy_rows(teacher: Path, n_eval: int, work: Path) -> tuple[list[dict], dict]:
    import torch

    from slm_toolkit.data.loaders import load_data
    from slm_toolkit.data.segments import prompt_ids
    from slm_toolkit.measures.metrics import exact_match, generation_budget
    from slm_toolkit.models.load import load_model
    from slm_toolkit.models.quantized import load_torchao_model
    from slm_toolkit.quantize.torchao_backend import quantize_torchao
    from slm_toolkit.runtime.torch import TorchGenerator

    model, tok = load_model(teacher, device=DEVICE, dtype=torch.float32)
    examples = load_data("builtin:arith-cot", "auto", 1, n_eval, seed=0, task={}).eval
    budget = generation_budget(tok, examples)
    low_dir = work / f"teacher-{LOW}"
    quantize_torchao(teacher, low_dir, LOW, device=DEVICE)  # the quantize stage's code path
    low = load_torchao_model(low_dir, device=DEVICE)  # reloaded from safetensors as the stage does
    variants = {"fp32": model, "bf16": copy.deepcopy(model).to(torch.bfloat16), LOW: low}
    prompts = [prompt_ids(tok, ex.prompt) for ex in examples[:8]]
    checks = {f"{LOW}_weights": check_float8(low), f"{LOW}_logit_tv": logit_gap(variants["bf16"], low, prompts)}
    rows = []
    for name, m in variants.items():
        gen = TorchGenerator(m, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        t0 = time.perf_counter()
        q = exact_match(gen, tok, examples, budget, batch_size=64)
        rows.append(
            {
                "model": "demo_teacher",
                "variant": name,
                "accuracy": q["accuracy"],
                "answer_rate": q["answer_rate"],
                "n": len(examples),
                "seconds": time.perf_counter() - t0,
            }
        )
    return rows, checks


def check_float8(model) -> int:
    """Number of quantized (Float8Tensor) linear weights; fails if any linear but lm_head stayed plain."""
    import torch

    plain, fp8 = [], 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and mod is not model.get_output_embeddings():
            if type(mod.weight).__name__ == LOW_TENSOR:
                fp8 += 1
            else:
                plain.append(name)
    if plain or not fp8:
        raise CheckFailed(f"fp8 model has non-fp8 linear layers: {plain[:5]}")
    return fp8


def logit_gap(ref, low, prompts: list[list[int]]) -> float:
    """Mean total-variation distance between the next-token distributions of `ref` and `low` over
    the demo prompts; fails above 0.2 (the quantized model no longer predicts like its input)."""
    import torch

    gaps = []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids], device=DEVICE)
            a = ref(x).logits.float().softmax(-1)
            b = low(x).logits.float().softmax(-1)
            gaps.append(float((a - b).abs().sum(-1).mean() / 2))
    gap = statistics.mean(gaps)
    if not math.isfinite(gap) or gap > 0.2:
        raise CheckFailed(f"{LOW} next-token distributions differ from bf16 by {gap:.3f} (total variation)")
    return gap


# -- decode throughput ----------------------------------------------------------------------------
def llama_1b():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA_1B, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    return model.to(torch.bfloat16).eval()


def fp8_copy(model):
    """A deep copy quantized in memory with the stage's torchao config (lm_head left in bf16)."""
    from torchao.quantization import quantize_

    from slm_toolkit.quantize.torchao_backend import ao_config

    q = copy.deepcopy(model)
    head = q.get_output_embeddings()
    quantize_(q, ao_config(LOW), filter_fn=lambda mod, fqn: _is_linear(mod) and mod is not head)
    return q.eval()


def _is_linear(mod) -> bool:
    import torch

    return isinstance(mod, torch.nn.Linear)


def throughput_rows(
    label: str, variants: dict, batches: list[int], prompt_len: int, new_tokens: int, repeats: int
) -> list[dict]:
    import torch

    rows = []
    vocab = next(iter(variants.values())).config.vocab_size
    for batch in batches:
        ids = torch.randint(6, vocab, (batch, prompt_len), device=DEVICE)
        times = {k: [] for k in variants}
        prefill = {k: [] for k in variants}
        for _ in range(2):  # warm-up
            for m in variants.values():
                _generate(m, ids, new_tokens)
        for _ in range(repeats):  # interleaved
            for name, m in variants.items():
                times[name].append(_timed(lambda m=m, ids=ids: _generate(m, ids, new_tokens)))
                prefill[name].append(_timed(lambda m=m, ids=ids: _prefill(m, ids)))
        for name in variants:
            med = statistics.median(times[name])
            rows.append(
                {
                    "model": label,
                    "variant": name,
                    "batch": batch,
                    "prompt_len": prompt_len,
                    "new_tokens": new_tokens,
                    "decode_tok_s": batch * new_tokens / med,
                    "generate_ms_median": med * 1e3,
                    "generate_ms_spread": _iqr(times[name]) * 1e3,
                    "prefill_ms": statistics.median(prefill[name]) * 1e3,
                    "repeats": repeats,
                }
            )
    return rows


def _generate(model, ids, new_tokens):
    import torch

    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    if out.shape[1] != ids.shape[1] + new_tokens:
        raise CheckFailed(f"generate returned {out.shape[1] - ids.shape[1]} tokens, not {new_tokens}")
    return out


def _prefill(model, ids):
    import torch

    with torch.no_grad():
        return model(ids, attention_mask=torch.ones_like(ids), logits_to_keep=1).logits


def _timed(fn) -> float:

    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _iqr(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[2] - q[0]


# -- report ---------------------------------------------------------------------------------------
def table(acc: list[dict], speed: list[dict]) -> str:
    lines = ["| model | variant | accuracy | answer rate |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['variant']} | {r['accuracy']:.3f} | {r['answer_rate']:.3f} |" for r in acc]
    lines += [
        "",
        "| model | batch | variant | decode tok/s | generate ms (spread) | prefill ms | vs bf16 |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {(r["model"], r["batch"]): r["decode_tok_s"] for r in speed if r["variant"] == "bf16"}
    for r in speed:
        ratio = r["decode_tok_s"] / base[(r["model"], r["batch"])]
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['variant']} | {r['decode_tok_s']:.0f} | "
            f"{r['generate_ms_median']:.1f} ({r['generate_ms_spread']:.1f}) | {r['prefill_ms']:.2f} | "
            f"×{ratio:.2f} |"
        )
    return "\n".join(lines)


def check_results(acc: list[dict], speed: list[dict], min_accuracy: float) -> None:
    bf16 = next(r for r in acc if r["variant"] == "bf16")
    if bf16["accuracy"] < min_accuracy:
        raise CheckFailed(
            f"the bf16 teacher solves only {bf16['accuracy']:.2f} of the demo task "
            f"(< {min_accuracy}): the accuracy delta would mean nothing"
        )
    for r in speed:
        if not (math.isfinite(r["decode_tok_s"]) and r["decode_tok_s"] > 0):
            raise CheckFailed(f"bad throughput figure: {r}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "gpu" / "results.json")
    p.add_argument("--teacher", default="builtin:arith-teacher", help="model spec or folder")
    p.add_argument("--eval", type=int, default=500, help="demo-task eval examples")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-accuracy", type=float, default=0.5)
    p.add_argument("--skip-1b", action="store_true", help="only the demo teacher (quick check)")
    p.add_argument(
        "--smoke-cpu",
        action="store_true",
        help="check this script without a GPU: CPU, int8_dynamic in place of fp8; measures nothing",
    )
    args = p.parse_args()

    env = smoke_setup() if args.smoke_cpu else preflight()
    import torch

    from slm_toolkit.models.resolve import resolve_model

    torch.backends.cuda.matmul.allow_tf32 = False
    t_start = time.perf_counter()
    batches = [int(b) for b in args.batches.split(",")]
    try:
        teacher = resolve_model(args.teacher, task={}, progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            acc, checks = accuracy_rows(teacher, args.eval, Path(tmp))
        from slm_toolkit.models.load import load_model

        t_bf16, _ = load_model(teacher, device=DEVICE, dtype=torch.bfloat16)
        speed = throughput_rows(
            "demo_teacher",
            {"bf16": t_bf16, LOW: fp8_copy(t_bf16)},
            batches,
            args.prompt_len,
            args.new_tokens,
            args.repeats,
        )
        if not args.skip_1b:
            big = llama_1b()
            big8 = fp8_copy(big)
            checks[f"llama_1b_{LOW}_weights"] = check_float8(big8)
            speed += throughput_rows(
                "llama_1b", {"bf16": big, LOW: big8}, batches, args.prompt_len, args.new_tokens, args.repeats
            )
        check_results(acc, speed, args.min_accuracy)
    except CheckFailed as e:
        print(f"fp8_vs_bf16: CHECK FAILED: {e}", file=sys.stderr)
        return 1
    bf16_acc = next(r["accuracy"] for r in acc if r["variant"] == "bf16")
    fp8_acc = next(r["accuracy"] for r in acc if r["variant"] == LOW)
    result = {
        "env": env,
        "accuracy": acc,
        f"accuracy_delta_{LOW}_vs_bf16": fp8_acc - bf16_acc,
        "throughput": speed,
        "checks": checks,
        "seconds": time.perf_counter() - t_start,
        "command": " ".join(sys.argv),
    }
    _write_json(args.out, result)
    print(table(acc, speed))
    print(f"\naccuracy delta {LOW} - bf16: {fp8_acc - bf16_acc:+.3f}   ({env['gpu']}, {result['seconds']:.0f} s)")
    print(f"wrote {args.out}")
    return 0


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
