"""The recipe's `data:` section (pydantic only, no torch: `slm validate` imports it).

data:
  source: builtin:arith-cot   # or a .jsonl file, or a folder with train.jsonl / test.jsonl ($VARS expand)
  format: auto                # auto | fields | gsm8k | think
  train: 20000                # training examples
  eval: 500                   # held-out examples
  task: {steps: 4, digits: 1, ops: "+-", verify: 0}   # the builtin demo task only

A source is checked by the row of slm_toolkit.data.loaders.DATA_SOURCES that handles it (a
plugin's prefix such as `builtin:` names only what the plugin provides); paths are checked when
the data is loaded.
"""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slm_toolkit.core.types import PositiveInt
from slm_toolkit.data.loaders import check_data_source

DEMO_OPS = "+-*"


class DemoTaskConfig(BaseModel):
    """Knobs of the builtin arithmetic task (see slm_toolkit.demo.task)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(4, description="operations per problem (operands = steps + 1)")
    digits: int = Field(1, description="digits of every operand")
    ops: str = Field("+-", description='operators drawn from, a subset of "+-*"')
    verify: int = Field(0, description="times the CoT re-checks its derivation before the answer")

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        return _in_range(v, 1, 16)

    @field_validator("digits")
    @classmethod
    def _digits(cls, v: int) -> int:
        return _in_range(v, 1, 4)

    @field_validator("verify")
    @classmethod
    def _verify(cls, v: int) -> int:
        return _in_range(v, 0, 4)

    @field_validator("ops")
    @classmethod
    def _ops(cls, v: str) -> str:
        if not v:
            raise ValueError('must name at least one operator of "+-*"')
        bad = sorted(set(v) - set(DEMO_OPS))
        if bad:
            raise ValueError(f'must be a subset of "+-*" (got {"".join(bad)!r})')
        if len(set(v)) != len(v):
            raise ValueError("must not repeat an operator")
        return v


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = "builtin:arith-cot"
    format: Literal["auto", "fields", "gsm8k", "think"] = "auto"
    train: PositiveInt = 20000
    eval: PositiveInt = 500
    task: DemoTaskConfig = Field(default_factory=DemoTaskConfig)

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        v = _expand_env(v)
        check_data_source(v)
        return v


def _expand_env(v: str) -> str:
    """`$NAME` / `${NAME}` in a source become the variable's value; an unset one is an error."""
    if "$" not in v:
        return v
    expanded = os.path.expandvars(v)
    unset = re.findall(r"\$\{?(\w+)", expanded)
    if unset:
        raise ValueError(
            f"{v!r} names ${unset[0]}, which is not set: export it or give the path (data.source=<folder>)"
        )
    return expanded


def _in_range(v: int, lo: int, hi: int) -> int:
    if v < lo:
        raise ValueError(f"must be >= {lo}")
    if v > hi:
        raise ValueError(f"must be <= {hi}")
    return v
