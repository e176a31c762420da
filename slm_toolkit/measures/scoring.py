"""Teacher-forced scoring through any Generator: per-segment perplexity and greedy agreement.

`teacher_forced(generator, prefixes, continuations)` feeds each continuation token by token
after its prefix and returns, at every continuation position, the log-probability the model
gives the true token and the token it would have picked greedily. Two ways to get there, same
numbers (up to float rounding):

- a PyTorch generator (it has a `model`): one forward pass over the whole padded sequence;
- any other backend (ONNX Runtime, TensorRT, ...): `prefill(prefixes)` then one `decode_step`
  per continuation token, the KV cache doing the work. Only the protocol is used, so every
  artifact the runtime can open is scored the same way; the prefix itself is not scored;
- an engine outside the toolkit's runtime (a benchmark's peer) may bring its own
  `teacher_forced(prefixes, continuations)` with the same contract; it is used as is.

On top of it:
- `segment_perplexity`: mean NLL and perplexity of the prompt (PyTorch only), CoT and answer
  tokens of `data.segments.tokenize_examples`' sequences.
- `shown_perplexity`: None for a figure worse than a uniform guess (reports print "—").
- `greedy_agreement`: the share of a reference model's greedy tokens that the model also picks
  when fed the reference's own continuation (top-1 agreement, teacher-forced).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from slm_toolkit.data.example import ANSWER, COT, PROMPT, Example
from slm_toolkit.data.segments import prompt_ids, tokenize_examples

SEGMENTS = {"prompt": PROMPT, "cot": COT, "answer": ANSWER}
# Positions whose logits one PyTorch forward holds at once (x vocabulary x 4 bytes).
TORCH_POSITIONS = 2048


def teacher_forced(
    generator: Any,
    prefixes: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    batch_size: int = 16,
) -> list[tuple[Any, Any]]:
    """For each (prefix, continuation): (log p of each continuation token [n] float64, the
    greedy token at each of those positions [n] int64), in input order. Empty continuations
    give empty arrays."""
    import numpy as np

    if len(prefixes) != len(continuations):
        raise ValueError("teacher_forced needs one continuation per prefix")
    own = getattr(generator, "teacher_forced", None)
    if own is not None:  # an engine that scores in its own way (e.g. a subprocess with all logits)
        return own(prefixes, continuations)
    out: list[tuple[Any, Any]] = [(np.zeros(0), np.zeros(0, dtype=np.int64))] * len(prefixes)
    todo = [i for i, c in enumerate(continuations) if len(c)]
    order = sorted(todo, key=lambda i: len(prefixes[i]) + len(continuations[i]))
    torch_model = _torch_model(generator)
    chunks = (
        _token_chunks(order, prefixes, continuations, batch_size)
        if torch_model is not None
        else [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    )
    for rows in chunks:
        pre = [list(prefixes[i]) for i in rows]
        cont = [list(continuations[i]) for i in rows]
        scored = _forward(torch_model, generator.pad_token_id, pre, cont) if torch_model is not None else None
        for i, result in zip(rows, scored or _stepwise(generator, pre, cont)):
            out[i] = result
    return out


def segment_perplexity(
    generator: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int = 16
) -> dict[str, float]:
    """Teacher-forced mean NLL (nats/token) and perplexity of each segment, over all examples.

    `generator` is a Generator or a transformers model (wrapped in runtime.torch's). Every token
    is counted in the segment it belongs to. PyTorch scores the whole sequence from its second
    token; other backends score what follows the generation prompt (CoT, answer, the template
    between them and the final EOS), so they report no prompt figure. Returns nll_* and
    ppl_* = exp(nll_*) for each segment that has scored tokens.
    """
    generator = _as_generator(generator)
    seqs = tokenize_examples(tokenizer, examples)
    whole = _torch_model(generator) is not None
    cuts = [1 if whole else len(prompt_ids(tokenizer, ex.prompt)) for ex in examples]
    scored = teacher_forced(
        generator, [s.ids[:c] for s, c in zip(seqs, cuts)], [s.ids[c:] for s, c in zip(seqs, cuts)], batch_size
    )
    sums = {sid: 0.0 for sid in SEGMENTS.values()}
    counts = {sid: 0 for sid in SEGMENTS.values()}
    for seq, cut, (logp, _) in zip(seqs, cuts, scored):
        for sid, lp in zip(seq.segments[cut:], logp):
            if sid in sums:
                sums[sid] -= float(lp)
                counts[sid] += 1
    out: dict[str, float] = {}
    for name, sid in SEGMENTS.items():
        if counts[sid]:
            mean = sums[sid] / counts[sid]
            out[f"nll_{name}"] = mean
            out[f"ppl_{name}"] = math.exp(min(mean, 700.0))
    return out


def greedy_agreement(
    generator: Any,
    prompts: Sequence[Sequence[int]],
    reference_tokens: Sequence[Sequence[int]],
    batch_size: int = 16,
) -> float:
    """Share of the reference's greedy tokens (after each prompt) that `generator` also picks
    greedily when fed the reference's continuation: 1.0 for the reference itself."""
    scored = teacher_forced(_as_generator(generator), prompts, reference_tokens, batch_size)
    hits = sum(int((greedy == list(ref)).sum()) for (_, greedy), ref in zip(scored, reference_tokens) if len(ref))
    total = sum(len(ref) for ref in reference_tokens)
    if not total:
        raise ValueError("greedy_agreement: the reference generated no tokens")
    return hits / total


def shown_perplexity(ppl: float | None, vocab_size: float | None) -> float | None:
    """`ppl`, or None where it means nothing: at or above the vocabulary size the model does worse
    than a uniform guess, i.e. it was never trained on that segment (a demo teacher on prompts)."""
    if ppl is None or (vocab_size and ppl >= vocab_size):
        return None
    return ppl


# ----- the two strategies


def _as_generator(obj: Any) -> Any:
    if hasattr(obj, "prefill") or hasattr(obj, "teacher_forced"):
        return obj
    from slm_toolkit.runtime.torch import TorchGenerator

    return TorchGenerator(obj)


def _torch_model(generator: Any) -> Any:
    model = getattr(generator, "model", None)
    return model if getattr(generator, "backend", None) == "torch" and hasattr(model, "parameters") else None


def _token_chunks(order: list[int], prefixes, continuations, batch_size: int) -> list[list[int]]:
    """Rows in length order, cut so that no forward pass holds more than TORCH_POSITIONS positions."""
    chunks: list[list[int]] = [[]]
    for i in order:
        width = len(prefixes[i]) + len(continuations[i])
        rows = chunks[-1]
        if rows and (len(rows) >= batch_size or (len(rows) + 1) * width > TORCH_POSITIONS):
            chunks.append(rows := [])
        rows.append(i)
    return [c for c in chunks if c]


def _forward(model: Any, pad_id: int, prefixes: list[list[int]], conts: list[list[int]]) -> list[tuple[Any, Any]]:
    """One right-padded forward pass; the logits at position t predict token t + 1."""
    import torch

    rows = [p + c for p, c in zip(prefixes, conts)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = 1
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
    out = []
    for b, (p, c) in enumerate(zip(prefixes, conts)):
        row = logits[b, len(p) - 1 : len(p) + len(c) - 1].float()
        target = torch.tensor(c, device=row.device)
        logp = torch.log_softmax(row, dim=-1).gather(-1, target[:, None])[:, 0]
        out.append((logp.double().cpu().numpy(), row.argmax(-1).cpu().numpy()))
    return out


def _stepwise(generator: Any, prefixes: list[list[int]], conts: list[list[int]]) -> list[tuple[Any, Any]]:
    """prefill + one decode_step per token; rows leave the batch when their continuation ends."""
    import numpy as np

    logps = [np.zeros(len(c)) for c in conts]
    greedy = [np.zeros(len(c), dtype=np.int64) for c in conts]
    logits, state = generator.prefill(prefixes)
    alive = list(range(len(conts)))
    step = 0
    while alive:
        x = np.asarray(logits, dtype=np.float64)
        lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
        for row, i in enumerate(alive):
            logps[i][step] = x[row, conts[i][step]] - lse[row]
            greedy[i][step] = int(x[row].argmax())
        keep = [row for row, i in enumerate(alive) if step + 1 < len(conts[i])]
        if not keep:
            break
        if len(keep) < len(alive):
            state = generator.select(state, keep)
            alive = [alive[row] for row in keep]
        logits, state = generator.decode_step([conts[i][step] for i in alive], state)
        step += 1
    return list(zip(logps, greedy))
