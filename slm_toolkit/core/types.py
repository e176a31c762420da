"""Constrained value types shared by every config model (recipe keys, serve and bench options).

One spelling of each rule, one message: a recipe error reads `stages[2].distill.steps: must be >= 1`
whichever config the key lives in. Use them as field annotations:

    steps: PositiveInt = 100
    limit: PositiveInt | None = None      # null allowed; the message of the non-null rule applies
    fraction: Fraction01 = 0.5

pydantic runs the check as an after-validator, so the ValueError text is exactly the message below
(errors.py strips pydantic's "Value error, " prefix and adds the key's path).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def _check(ok, message: str):
    def validate(value):
        if not ok(value):
            raise ValueError(message)
        return value

    return AfterValidator(validate)


PositiveInt = Annotated[int, _check(lambda v: v >= 1, "must be >= 1")]
NonNegativeInt = Annotated[int, _check(lambda v: v >= 0, "must be >= 0")]
PositiveFloat = Annotated[float, _check(lambda v: v > 0, "must be > 0")]
NonNegativeFloat = Annotated[float, _check(lambda v: v >= 0, "must be >= 0")]
# [0, 1]: a share or weight where both ends mean something (0 = off, 1 = everything)
Fraction01 = Annotated[float, _check(lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")]
# [0, 1): a share that must leave something (e.g. the share of heads pruned)
FractionBelow1 = Annotated[float, _check(lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")]
# (0, 1): a strict share (e.g. the kept fraction of a truncated sequence)
OpenFraction = Annotated[float, _check(lambda v: 0.0 < v < 1.0, "must be in (0, 1)")]
