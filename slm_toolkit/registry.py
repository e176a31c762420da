"""The explicit stage registry: every stage is a config model plus a `run` function, listed here.

Config models live in light modules (`slm_toolkit/<stage>/config.py`, pydantic only) so that
`slm validate` does not import torch; `run` functions are imported when the stage runs.
Nothing is discovered by name: a stage exists because it has a line in `STAGES` below.

Artifact kinds (core.artifacts.Kind: hf, hf-quantized, onnx, tensorrt) flow through a recipe. A
stage declares the kinds it accepts and the kind it produces (a function of its config), so that
an impossible order (`quantize: {scheme: ort_int8_dynamic}` before any export, or `export` after a
torchao quantization, or after a recipe `model:` that is a quantized folder) is a recipe error.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from slm_toolkit.core.artifacts import Kind
from slm_toolkit.quantize.schemes import SCHEMES

# A quantized Hugging Face folder (Kind.HF_QUANTIZED) can be evaluated, benched and served, but not
# distilled, pruned, re-quantized or exported: those need float weights.
ANY = frozenset(Kind)


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class StageSpec:
    name: str
    config_ref: str  # "module:ConfigClass"
    run_ref: str  # "module:run"
    accepts: frozenset[Kind]
    # "module:function" taking (cfg, input_kind) and returning the output Kind; None = same as input
    output_kind_ref: str | None = None
    test_module: str = ""  # the test that exercises this stage (checked by the meta-test)

    @property
    def config(self) -> type[BaseModel]:
        return _resolve(self.config_ref)

    @property
    def run(self) -> Callable[..., Any]:
        return _resolve(self.run_ref)

    def output_kind(self, cfg: BaseModel, input_kind: Kind) -> Kind:
        if self.output_kind_ref is None:
            return Kind(input_kind)
        return Kind(_resolve(self.output_kind_ref)(cfg, Kind(input_kind)))


STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in [
        StageSpec(
            "distill",
            "slm_toolkit.distill.config:DistillConfig",
            "slm_toolkit.distill.stage:run",
            accepts=frozenset({Kind.HF}),
            test_module="tests/integration/test_distill_stage.py",
        ),
        StageSpec(
            "prune",
            "slm_toolkit.prune.config:PruneConfig",
            "slm_toolkit.prune.stage:run",
            accepts=frozenset({Kind.HF}),
            test_module="tests/integration/test_prune_stage.py",
        ),
        StageSpec(
            "quantize",
            "slm_toolkit.quantize.config:QuantizeConfig",
            "slm_toolkit.quantize.stage:run",
            accepts=frozenset(s.accepts for s in SCHEMES.values()),
            output_kind_ref="slm_toolkit.quantize.config:output_kind",
            test_module="tests/integration/test_quantize_stage.py",
        ),
        StageSpec(
            "export",
            "slm_toolkit.export.config:ExportConfig",
            "slm_toolkit.export.stage:run",
            accepts=frozenset({Kind.HF}),
            output_kind_ref="slm_toolkit.export.config:output_kind",
            test_module="tests/integration/test_export_stage.py",
        ),
        StageSpec(
            "evaluate",
            "slm_toolkit.evaluate.config:EvaluateConfig",
            "slm_toolkit.evaluate.stage:run",
            accepts=ANY,
            test_module="tests/integration/test_evaluate_stage.py",
        ),
        StageSpec(
            "bench",
            "slm_toolkit.bench.config:BenchConfig",
            "slm_toolkit.bench.stage:run",
            accepts=ANY,
            test_module="tests/integration/test_bench_stage.py",
        ),
    ]
}
