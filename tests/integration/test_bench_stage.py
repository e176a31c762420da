"""The `bench` recipe stage: serve the input artifact, sweep, stop the server, report."""

from __future__ import annotations

import json
from pathlib import Path

from bench_helpers import make_tiny

from slm_toolkit.bench.config import BenchConfig
from slm_toolkit.bench.stage import run
from slm_toolkit.data.example import DataBundle
from slm_toolkit.stage import StageInput


def test_bench_stage(tmp_path: Path):
    artifact = make_tiny(tmp_path / "tiny-llama")
    workdir = tmp_path / "07-bench"
    workdir.mkdir()
    inp = StageInput(
        artifact=artifact,
        model=artifact,
        data=DataBundle([], [], "none"),
        workdir=workdir,
        run_dir=tmp_path,
        device="cpu",
        seed=0,
    )
    cfg = BenchConfig(backend="torch", concurrency=[1, 3], num_requests=4, input_len=6, output_len=5, warmup=1)
    out = run(cfg, inp)
    assert out.artifact == artifact  # bench never changes the artifact
    m = out.metrics
    assert m["completed_c1"] == 4 and m["completed_c3"] == 4 and m["failed_c1"] == 0
    assert m["output_throughput_c1"] > 0 and m["median_ttft_ms_c3"] > 0
    assert all(isinstance(v, float) for v in m.values())
    assert out.timings["bench_s"] >= out.timings["server_start_s"] > 0
    assert "| c3 |" in out.extra["report_md"]
    for p in out.extra["plots"]:
        assert (workdir / p).is_file()
    doc = json.loads((workdir / "results.json").read_text())
    assert doc["backend"] == "torch" and sum(lv["total_output_tokens"] for lv in doc["levels"]) == 40
    assert "Shutting down" in (workdir / "server.log").read_text()
