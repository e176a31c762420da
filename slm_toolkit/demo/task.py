"""The builtin demo task: multi-step arithmetic with a chain of thought, exactly checkable.

One example, steps=4, digits=1, ops="+-", verify=1:

    prompt  7+3-5+8-2=
    cot     7+3=10;10-5=5;5+8=13;13-2=11;check:11+2=13;13-8=5;5+5=10;10-3=7
    answer  11

Rules (all deterministic from the seed):
- `steps` operations, `steps + 1` operands; every operand has at most `digits` digits.
- Evaluation is strictly left to right (no operator precedence): "2+3*4=" is 20. The CoT
  writes one line per operation, `a<op>b=c`, joined by ";".
- Intermediate values never go negative and never exceed 10**(digits+1) - 1 (99 for one digit),
  by construction: the operator is drawn uniformly from `ops`, then the operand uniformly from
  those that keep the value in range (0 is always allowed for + and -, 1 for *; * never uses 0,
  so its inverse is an exact division).
- `verify=k` appends k re-checks, ";check:" each: odd checks re-derive backwards from the
  result to the first operand with the inverse operations (+ <-> -, * -> /), even checks
  repeat the forward derivation. This is the redundancy of real reasoning traces: the answer
  is already known when the checks start.
"""

from __future__ import annotations

import random

from slm_toolkit.data.example import Example

# Every character the task can produce (prompt, CoT and answer).
DEMO_CHARS = "0123456789+-*/=;:chek"

_INVERSE = {"+": "-", "-": "+", "*": "/"}


def generate_examples(n: int, seed: int, steps: int, digits: int, ops: str, verify: int) -> list[Example]:
    """`n` examples drawn from `random.Random(seed)`: the same arguments always give the same list."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not ops or set(ops) - set(_INVERSE):
        raise ValueError(f'ops must be a non-empty subset of "+-*", got {ops!r}')
    rng = random.Random(seed)
    return [_one_example(rng, steps, digits, ops, verify) for _ in range(n)]


def solve(prompt: str) -> int:
    """The answer of a demo prompt such as "7+3-5=" (left to right, no precedence)."""
    value, moves = _parse(prompt)
    for op, b in moves:
        value = _apply(value, op, b)
    return value


def _one_example(rng: random.Random, steps: int, digits: int, ops: str, verify: int) -> Example:
    max_operand = 10**digits - 1
    max_value = 10 ** (digits + 1) - 1
    first = rng.randint(0, max_operand)
    value, moves = first, []
    for _ in range(steps):
        op = rng.choice(ops)
        lo, hi = _operand_range(value, op, max_operand, max_value)
        b = rng.randint(lo, hi)
        moves.append((op, b))
        value = _apply(value, op, b)
    return format_example(first, moves, verify)


def format_example(first: int, moves: list[tuple[str, int]], verify: int) -> Example:
    """The task's text for a problem: `first` then (op, operand) moves, with `verify` checks.

    Public so that other generators of the same format (e.g. easy-operand pretraining data for
    the builtin student) write exactly this text instead of a copy of it.
    """
    value = first
    for op, b in moves:
        value = _apply(value, op, b)
    prompt = str(first) + "".join(f"{op}{b}" for op, b in moves) + "="
    lines = _forward(first, moves)
    for check in range(1, verify + 1):
        lines_check = _backward(value, moves) if check % 2 == 1 else _forward(first, moves)
        lines_check[0] = "check:" + lines_check[0]
        lines += lines_check
    return Example(prompt=prompt, cot=";".join(lines), answer=str(value))


def _operand_range(value: int, op: str, max_operand: int, max_value: int) -> tuple[int, int]:
    if op == "+":
        return 0, min(max_operand, max_value - value)
    if op == "-":
        return 0, min(max_operand, value)
    return 1, max_operand if value == 0 else min(max_operand, max_value // value)


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a // b  # "/" only appears in backward checks, where it is exact


def _forward(first: int, moves: list[tuple[str, int]]) -> list[str]:
    lines, value = [], first
    for op, b in moves:
        new = _apply(value, op, b)
        lines.append(f"{value}{op}{b}={new}")
        value = new
    return lines


def _backward(last: int, moves: list[tuple[str, int]]) -> list[str]:
    lines, value = [], last
    for op, b in reversed(moves):
        inv = _INVERSE[op]
        new = _apply(value, inv, b)
        lines.append(f"{value}{inv}{b}={new}")
        value = new
    return lines


def _parse(prompt: str) -> tuple[int, list[tuple[str, int]]]:
    body = prompt.rstrip("=")
    first, moves, i = "", [], 0
    while i < len(body) and body[i].isdigit():
        first += body[i]
        i += 1
    while i < len(body):
        op, i, num = body[i], i + 1, ""
        while i < len(body) and body[i].isdigit():
            num += body[i]
            i += 1
        if op not in _INVERSE or not num:
            raise ValueError(f"not a demo prompt: {prompt!r}")
        moves.append((op, int(num)))
    if not first:
        raise ValueError(f"not a demo prompt: {prompt!r}")
    return int(first), moves
