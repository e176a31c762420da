"""The truncation protocol keys of the `distill` stage: what each one plans (masks, schedules,
micro-batches), deterministic given the seed, and a one-line recipe error naming each bad key."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from slm_toolkit.cli import app
from slm_toolkit.core.errors import RecipeError
from slm_toolkit.data.example import ANSWER, COT, PROMPT, TEMPLATE, TokenizedExample
from slm_toolkit.distill.batching import cache_sequences, plan_batches, plan_steps
from slm_toolkit.distill.config import DistillConfig, TruncateConfig
from slm_toolkit.distill.masks import label_weights
from slm_toolkit.distill.truncation import Cut, keep_length, truncate
from slm_toolkit.recipe import load_recipe

T, P, C, A = TEMPLATE, PROMPT, COT, ANSWER
TABLE = {P: 1.0, C: 1.0, A: 1.0}


def example(n_prompt=3, n_cot=12, n_answer=2, start=10) -> TokenizedExample:
    # <bos> P.. <think> C.. </think> A.. <eos>
    segs = [T] + [P] * n_prompt + [T] + [C] * n_cot + [T] + [A] * n_answer + [T]
    return TokenizedExample(ids=list(range(start, start + len(segs))), segments=segs)


EXAMPLES = [example(3, 10 + i % 5, 2, start=100 * i) for i in range(80)]


def _steps(cut, n=80, batch_size=8, grad_accum=1, seed=0, rank=0, world=1, examples=EXAMPLES):
    return list(
        plan_steps(
            examples[:n],
            batch_size=batch_size,
            grad_accum=grad_accum,
            epochs=1,
            seed=seed,
            weight_table=TABLE,
            pad_id=0,
            cut=cut,
            rank=rank,
            world=world,
        )
    )


# -- the typed value: built only when truncation is on ------------------------------------------
def test_cut_exists_only_when_truncation_is_active():
    assert Cut.of(TruncateConfig()) is None
    cut = Cut.of(TruncateConfig(fraction=0.4, full_batches=0.2, schedule="end", fraction_start=0.2))
    assert cut == Cut(fraction=0.4, full_share=0.2, schedule="end", fraction_start=0.2)
    assert Cut.of(TruncateConfig(tokens=64)).tokens == 64
    with pytest.raises(ValueError, match="exactly one of"):
        Cut()


# -- where the untruncated batches go --------------------------------------------------------------
@pytest.mark.parametrize(
    "schedule,expected",
    [
        ("uniform", [3, 6, 9]),  # evenly spread: floor((i + 1) s) > floor(i s)
        ("front", [0, 1, 2]),  # the first s of the steps
        ("end", [7, 8, 9]),  # the last s of the steps: an annealing phase at full length
    ],
)
def test_schedule_places_the_whole_batches(schedule, expected):
    steps = _steps(Cut(fraction=0.5, full_share=0.3, schedule=schedule))
    assert [s.index for s in steps if s.full] == expected
    for s in steps:  # a whole batch is untruncated: every example has its full length
        assert s.whole == (s.examples if s.full else 0)
        real = sum(int(m.attention_mask.sum()) for m in s.micro)
        lengths = [len(EXAMPLES[i].ids) for i in _members(s.index)]
        assert real == (sum(lengths) if s.full else sum(keep_length(n, 0.5, None) for n in lengths))


def _members(index, batch_size=8, seed=0):
    plans = list(plan_batches(80, batch_size=batch_size, epochs=1, seed=seed, cut=None))
    return plans[index].members


def test_uniform_schedule_at_scale_is_an_exact_share_and_front_end_mirror():
    n = 100
    flags = {
        s: [Cut(fraction=0.5, full_share=0.15, schedule=s).full_batch(i, n) for i in range(n)]
        for s in ("uniform", "front", "end")
    }
    assert sum(flags["uniform"]) == sum(flags["front"]) == sum(flags["end"]) == 15
    assert flags["front"] == flags["end"][::-1]
    assert flags["front"][:15] == [True] * 15


# -- per-example mixing ---------------------------------------------------------------------------
def test_example_mixing_leaves_an_exact_share_of_every_batch_whole():
    cut = Cut(fraction=0.5, full_share=0.25, mixing="example")
    steps = _steps(cut, batch_size=8, grad_accum=2)
    assert not any(s.full for s in steps)
    assert [s.whole for s in steps] == [2] * 10  # 25% of the 8 examples of every batch
    trunc_max = max(m.tokens for s in _steps(Cut(fraction=0.5), batch_size=8, grad_accum=2) for m in s.micro)
    for s in steps:
        # 2 truncated micro-batches, then the whole sequences in parts of 4 // 2 = 2 examples
        assert len(s.micro) == 3
        assert max(m.tokens for m in s.micro) <= trunc_max  # peak memory stays at the truncated level
        assert sum(m.labels.numel() for m in s.micro) == s.denom
    plan = next(iter(plan_batches(80, batch_size=8, epochs=1, seed=0, cut=cut)))
    assert [b is None for b in plan.budgets] == [False, False, False, True] * 2  # evenly spread


def test_example_mixing_over_two_processes_shares_the_batch_and_its_parts():
    cut = Cut(fraction=0.5, full_share=0.25, mixing="example")
    one = _steps(cut, batch_size=8)
    two = [_steps(cut, batch_size=8, rank=r, world=2) for r in range(2)]
    for s, a, b in zip(one, *two):
        assert s.denom == a.denom == b.denom
        assert len(a.micro) == len(b.micro)  # every process runs as many micro-batches
        assert sum(m.labels.numel() for m in a.micro + b.micro) == sum(m.labels.numel() for m in s.micro)


# -- the CoT-only cut ----------------------------------------------------------------------------
def test_cot_only_keeps_the_prompt_and_the_answer_when_they_fit():
    ex = example(3, 12, 2)  # 1 + 3 + 1 + 12 + 1 + 2 + 1 = 21 tokens; prompt part 5, answer part 4
    ids, segs = truncate(ex.ids, ex.segments, fraction=0.5, tokens=None, mode="cot_only")
    keep = keep_length(21, 0.5, None)  # 11 = 5 prompt + 2 CoT + 4 answer
    assert len(ids) == keep
    assert ids[:7] == ex.ids[:7] and ids[7:] == ex.ids[-4:]
    assert segs == [T, P, P, P, T, C, C, T, A, A, T]
    # the answer's tokens carry their loss (label weights of </think>, answer and <eos>)
    assert label_weights(segs, {A: 2.0})[-3:] == [2.0, 2.0, 2.0]
    # the budget cannot hold prompt + answer: a prefix, never shorter than the prompt
    ids, _ = truncate(ex.ids, ex.segments, fraction=None, tokens=7, mode="cot_only")
    assert ids == ex.ids[:7]
    ids, _ = truncate(ex.ids, ex.segments, fraction=None, tokens=3, mode="cot_only")
    assert ids == ex.ids[:5]  # the whole prompt (with <think>), though the budget is 3
    # keep_answer, by contrast, keeps the answer even when it has to cut the prompt for it
    ids, _ = truncate(ex.ids, ex.segments, fraction=None, tokens=6, mode="keep_answer")
    assert ids == ex.ids[:2] + ex.ids[-4:]


def test_spliced_sequences_are_cached_as_the_plan_uses_them():
    cut = Cut(fraction=0.5, mode="cot_only", fraction_start=0.3)
    needed = cache_sequences(EXAMPLES[:40], cut, batch_size=8, epochs=1, seed=0)
    keys = {k for s in _steps(cut, n=40) for m in s.micro for k in m.cache_keys}
    assert keys <= set(needed)
    head = cache_sequences(EXAMPLES[:40], Cut(fraction=0.5), batch_size=8, epochs=1, seed=0)
    assert len(head) == 40  # prefixes read the full sequences' entries


# -- a truncation fraction that grows over training ----------------------------------------------
def test_growing_fraction_ramps_linearly_from_start_to_end():
    cut = Cut(fraction=0.8, fraction_start=0.2)
    assert [round(cut.fraction_at(i, 7), 6) for i in range(7)] == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    steps = _steps(cut, batch_size=8)  # 10 steps
    for s in steps:
        f = cut.fraction_at(s.index, 10)
        lengths = [len(EXAMPLES[i].ids) for i in _members(s.index)]
        assert sum(int(m.attention_mask.sum()) for m in s.micro) == sum(keep_length(n, f, None) for n in lengths)
    tokens = [sum(m.real_tokens for m in s.micro) for s in steps]
    assert tokens[-1] > 2.5 * tokens[0]


# -- deterministic given the seed -----------------------------------------------------------------
@pytest.mark.parametrize(
    "cut",
    [
        Cut(fraction=0.5, full_share=0.2, schedule="end"),
        Cut(fraction=0.5, full_share=0.2, mixing="example"),
        Cut(fraction=0.6, mode="cot_only", fraction_start=0.3),
    ],
)
def test_plans_are_a_function_of_the_seed(cut):
    def fingerprint(seed):
        return [(s.full, s.whole, s.denom, [m.input_ids.tolist() for m in s.micro]) for s in _steps(cut, seed=seed)]

    assert fingerprint(0) == fingerprint(0)
    assert fingerprint(0) != fingerprint(1)


# -- recipe keys: valid, documented, one line per bad key ---------------------------------------
def test_protocol_keys_are_recipe_keys_and_documented():
    cfg = DistillConfig.model_validate(
        {"truncate": {"fraction": 0.45, "full_batches": 0.15, "schedule": "end", "fraction_start": 0.25}}
    )
    assert cfg.truncate.active and cfg.truncate.schedule == "end"
    doc = TruncateConfig.__doc__
    for key in ("fraction", "tokens", "mode", "cot_only", "full_batches", "mixing", "schedule", "fraction_start"):
        assert f"`{key}`" in doc, key


RECIPE = "name: t\nmodel: m\nstages:\n  - distill:\n      truncate: {truncate}\n"


@pytest.mark.parametrize(
    "truncate,line",
    [
        ("{fraction: 0.5, schedule: end}", "truncate.schedule: places the untruncated batches: set `full_batches` > 0"),
        ("{fraction: 0.5, full_batches: 0.2, schedule: late}", "truncate.schedule: Input should be 'uniform', "),
        ("{fraction: 0.5, mixing: example}", "truncate.mixing: `example` leaves a share of the examples whole"),
        (
            "{fraction: 0.5, full_batches: 0.2, mixing: example, schedule: front}",
            "truncate.mixing: `example` spreads whole examples over every batch",
        ),
        ("{fraction: 0.5, full_batches: 1.0}", "truncate.full_batches: must be in [0, 1)"),
        ("{tokens: 64, fraction_start: 0.2}", "truncate.fraction_start: needs `fraction`"),
        ("{fraction: 0.5, fraction_start: 0.6}", "truncate.fraction_start: must be < `fraction`"),
        ("{fraction: 0.5, fraction_start: 0}", "truncate.fraction_start: must be in (0, 1)"),
        ("{full_batches: 0.2}", "truncate.full_batches: only applies to a truncated run"),
        ("{mode: cot_only}", "truncate.mode: only applies to a truncated run"),
        ("{fraction: 0.5, mode: cot}", "truncate.mode: Input should be 'head', 'keep_answer' or 'cot_only'"),
        ("{tokens: 0}", "truncate.tokens: must be >= 1"),
    ],
)
def test_bad_protocol_keys_fail_with_one_line_naming_the_key(tmp_path, truncate, line):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(truncate=truncate))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    (got,) = err.value.lines  # one line
    assert got.startswith(f"stages[0].distill.{line}"), got


def test_slm_validate_accepts_the_protocol_keys_and_names_a_bad_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = "{fraction: 0.45, full_batches: 0.15, schedule: end, mixing: batch, fraction_start: 0.3, mode: cot_only}"
    (tmp_path / "r.yaml").write_text(RECIPE.format(truncate=good))
    ok = CliRunner().invoke(app, ["validate", "r.yaml"])
    assert ok.exit_code == 0, ok.output
    shown = " ".join(ok.stdout.split())  # the stage's resolved keys, the protocol keys among them
    for key in (
        "truncate.fraction=0.45",
        "truncate.full_batches=0.15",
        "truncate.schedule=end",
        "truncate.mixing=batch",
        "truncate.fraction_start=0.3",
        "truncate.mode=cot_only",
    ):
        assert key in shown, key
    bad = CliRunner().invoke(app, ["validate", "r.yaml", "stages.0.distill.truncate.schedule=middle"])
    assert bad.exit_code == 2
    assert bad.stderr.strip().splitlines() == [
        "recipe error: stages[0].distill.truncate.schedule: Input should be 'uniform', 'front' or 'end' (got 'middle')"
    ]
