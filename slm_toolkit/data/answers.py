"""Answer normalization and exact-match checking (demo task, GSM8K, free text)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_NUMBER_JUNK = re.compile(r"[,$%\s]")


def normalize_answer(s: str) -> str:
    """A canonical form: numbers compare by value ("1,000" == "1000" == "1000.0", "$5" == "5");
    other text is stripped, lower-cased, whitespace collapsed, a trailing period dropped."""
    text = " ".join(s.strip().split()).rstrip(".").strip()
    number = _as_number(text)
    if number is not None:
        return number
    return text.lower()


def is_correct(pred: str | None, gold: str) -> bool:
    """Exact match after normalization; a missing prediction (None) is wrong."""
    if pred is None:
        return False
    return normalize_answer(pred) == normalize_answer(gold)


def _as_number(text: str) -> str | None:
    candidate = _NUMBER_JUNK.sub("", text)
    if not candidate or not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)", candidate):
        return None
    try:
        value = Decimal(candidate)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")
