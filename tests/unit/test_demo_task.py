"""The builtin arithmetic task: deterministic, correct, bounded, and `verify` adds re-checks."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from slm_toolkit.data.config import DataConfig, DemoTaskConfig
from slm_toolkit.demo.task import DEMO_CHARS, format_example, generate_examples, solve

LINE = re.compile(r"^(\d+)([-+*/])(\d+)=(\d+)$")


def left_to_right(prompt: str) -> int:
    """Independent reference: evaluate "a+b-c*d=" strictly left to right."""
    tokens = re.findall(r"\d+|[-+*]", prompt.rstrip("="))
    value = int(tokens[0])
    for op, num in zip(tokens[1::2], tokens[2::2]):
        value = {"+": value + int(num), "-": value - int(num), "*": value * int(num)}[op]
    return value


def check_line(line: str) -> tuple[int, int]:
    m = LINE.match(line)
    assert m, line
    a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
    if op == "/":
        assert b != 0 and a % b == 0, line
        expected = a // b
    else:
        expected = {"+": a + b, "-": a - b, "*": a * b}[op]
    assert c == expected, line
    return a, c


def test_same_seed_same_examples_other_seed_differs():
    a = generate_examples(50, 3, steps=4, digits=1, ops="+-", verify=1)
    assert a == generate_examples(50, 3, steps=4, digits=1, ops="+-", verify=1)
    assert a != generate_examples(50, 4, steps=4, digits=1, ops="+-", verify=1)
    assert generate_examples(10, 3, 4, 1, "+-", 1) == a[:10]


@pytest.mark.parametrize("steps,digits,ops", [(4, 1, "+-"), (6, 2, "+-*"), (3, 1, "*"), (1, 3, "-"), (16, 4, "+-*")])
def test_answers_and_derivations_are_correct_and_bounded(steps, digits, ops):
    max_value = 10 ** (digits + 1) - 1
    for ex in generate_examples(200, 0, steps=steps, digits=digits, ops=ops, verify=2):
        assert int(ex.answer) == left_to_right(ex.prompt) == solve(ex.prompt)
        operands = re.findall(r"\d+", ex.prompt)
        assert len(operands) == steps + 1
        assert all(len(x) <= digits for x in operands)
        assert set(re.findall(r"[-+*]", ex.prompt)) <= set(ops)
        derivation, *checks = ex.cot.split(";check:")
        lines = derivation.split(";")
        assert len(lines) == steps
        values = [check_line(line) for line in lines]
        assert values[0][0] == int(operands[0])
        assert values[-1][1] == int(ex.answer)
        assert all(0 <= v <= max_value for pair in values for v in pair)
        assert len(checks) == 2
        backward = [check_line(line) for line in checks[0].split(";")]
        assert backward[0][0] == int(ex.answer) and backward[-1][1] == int(operands[0])
        assert checks[1] == derivation  # the second check repeats the forward derivation


def test_verify_appends_checks_to_the_same_derivation():
    base = generate_examples(30, 1, 4, 1, "+-", verify=0)
    for k in range(1, 5):
        longer = generate_examples(30, 1, 4, 1, "+-", verify=k)
        for b, ex in zip(base, longer):
            assert (ex.prompt, ex.answer) == (b.prompt, b.answer)
            assert ex.cot.startswith(b.cot + ";check:")
            assert ex.cot.count("check:") == k
        base = longer


def test_compact_and_covered_by_demo_chars():
    examples = generate_examples(500, 0, 4, 1, "+-", 0)
    lengths = [len(e.prompt + e.cot + e.answer) for e in examples]
    assert 30 <= sum(lengths) / len(lengths) <= 60
    text = "".join(e.prompt + e.cot + e.answer for e in generate_examples(300, 1, 8, 3, "+-*", 3))
    assert set(text) <= set(DEMO_CHARS)
    assert text.isascii()


def test_problems_vary():
    prompts = {e.prompt for e in generate_examples(1000, 0, 4, 1, "+-", 0)}
    assert len(prompts) > 950


def test_bad_arguments_and_config_values():
    with pytest.raises(ValueError, match="ops"):
        generate_examples(1, 0, 4, 1, "+/", 0)
    for bad in (
        {"steps": 0},
        {"steps": 17},
        {"digits": 5},
        {"verify": 5},
        {"ops": ""},
        {"ops": "+/"},
        {"ops": "++"},
        {"stpes": 4},
    ):
        with pytest.raises(ValidationError):
            DemoTaskConfig(**bad)
    with pytest.raises(ValidationError, match="must be >= 1"):
        DataConfig(train=0)
    with pytest.raises(ValidationError):
        DataConfig(format="csv")
    with pytest.raises(ValidationError, match="unknown builtin"):
        DataConfig(source="builtin:other")
    cfg = DataConfig(task={"steps": 6, "ops": "+-*"})
    assert cfg.task.steps == 6 and cfg.source == "builtin:arith-cot"


def test_format_example_writes_the_task_text():
    ex = format_example(7, [("+", 3), ("-", 5), ("+", 8), ("-", 2)], verify=1)
    assert ex.prompt == "7+3-5+8-2="
    assert ex.cot == "7+3=10;10-5=5;5+8=13;13-2=11;check:11+2=13;13-8=5;5+5=10;10-3=7"
    assert ex.answer == "11"
    assert format_example(2, [("*", 3)], verify=2).cot == "2*3=6;check:6/3=2;check:2*3=6"
