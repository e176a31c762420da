"""The `bench` stage: serve the input artifact on a loopback port, run the sweep, stop the server.

    - bench: {backend: onnxruntime, concurrency: [1, 4, 16], num_requests: 64}

Writes results.json, results.md, the plots and server.log into the stage folder and returns the
input artifact unchanged, with flat metrics (output_throughput_c1, median_ttft_ms_c4, ...) and
the table and plots for the run report.
"""

from __future__ import annotations

import time

from slm_toolkit.bench.config import BenchConfig
from slm_toolkit.bench.server import serve_artifact
from slm_toolkit.stage import StageInput, StageOutput


def run(cfg: BenchConfig, inp: StageInput) -> StageOutput:
    from slm_toolkit.bench import runner
    from slm_toolkit.bench.client import Endpoint
    from slm_toolkit.bench.load import Level
    from slm_toolkit.bench.results import flat_metrics, table_md

    # setup
    if inp.artifact is None or not inp.artifact.is_dir():
        raise FileNotFoundError(f"bench: the input artifact folder is missing: {inp.artifact}")
    tokenizer = None
    if cfg.dataset == "random":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(inp.artifact)
    levels = [Level(c, cfg.rate, cfg.burstiness) if cfg.rate else Level(c) for c in cfg.concurrency]
    out = inp.workdir
    start = time.perf_counter()

    # loop: one server for the whole sweep
    with serve_artifact(
        inp.artifact,
        out / "server.log",
        backend=cfg.backend,
        scheduler=cfg.scheduler,
        max_batch_size=cfg.max_batch_size,
        device=inp.device,
        extra=["--threads", str(inp.threads)] if inp.threads else None,
    ) as (url, _proc):
        ready_s = time.perf_counter() - start
        info = {
            "label": inp.artifact.name,
            "artifact": str(inp.artifact),
            "backend": cfg.backend,
            "scheduler": cfg.scheduler,
            "max_batch_size": cfg.max_batch_size,
        }
        doc = runner.run(
            Endpoint(url),
            levels,
            dataset=cfg.dataset,
            num_requests=cfg.num_requests,
            input_len=cfg.input_len,
            output_len=cfg.output_len,
            warmup=cfg.warmup,
            seed=inp.seed,
            slo=cfg.slo,
            duration_s=None,
            tokenizer=tokenizer,
            out_dir=out,
            run_info=info,
        )

    # save (results.json/.md and plots are already in the stage folder)
    plots = ["latency_throughput.png", "ttft_cdf.png"]
    report = (
        f"Serving benchmark of `{inp.artifact.name}` ({cfg.backend} backend, {cfg.scheduler} scheduler, "
        f"{cfg.dataset} prompts, {cfg.output_len} output tokens; details in results.md):\n\n" + table_md(doc["levels"])
    )
    return StageOutput(
        artifact=inp.artifact,
        metrics=flat_metrics(doc["levels"]),
        timings={"server_start_s": ready_s, "bench_s": time.perf_counter() - start},
        extra={"report_md": report, "plots": plots},
    )
