"""Run a validated recipe: one stage after another, resumable, into `runs/<name>/`.

    runs/<name>/
      recipe.resolved.yaml     the recipe with every default filled in
      manifest.json            per stage: config hash, input artifact hash, status, metrics, timings
      01-distill/              a stage's folder (for model-producing stages: the artifact itself)
      02-evaluate/
      report.md, report.png
      final -> 01-distill      the last artifact (what `slm serve` serves)
      error.log                the traceback of the last failure

A stage runs in `NN-<stage>.tmp/`, renamed to `NN-<stage>/` when it returns: a folder without
`.tmp` is always complete. The temporary folder carries the stage key (name, config, input
artifact, seed, data); a run killed mid-stage and started again keeps it when the key still
matches, so a trainer resumes from the checkpoints inside it, and wipes it otherwise.
A completed stage whose key matches is skipped; `restart=True` reruns everything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from slm_toolkit.core.artifacts import (
    hash_folder,
    read_meta,
    replace_dir,
    write_json_atomic,
    write_meta,
    write_text_atomic,
)
from slm_toolkit.core.errors import RecipeError, StageFailed
from slm_toolkit.core.paths import cache_dir
from slm_toolkit.core.runlog import RUN_LOG, quiet_run, reroute
from slm_toolkit.data.example import DataBundle
from slm_toolkit.data.loaders import load_data
from slm_toolkit.models.resolve import resolve_model
from slm_toolkit.recipe import Recipe, StageEntry, dump_resolved
from slm_toolkit.registry import STAGES
from slm_toolkit.report import build_report
from slm_toolkit.run_folder import (
    ERROR_LOG,
    MANIFEST,
    clear_stage_folders,
    link_final,
    old_records,
    prepare_workdir,
    run_lock,
)
from slm_toolkit.stage import StageInput, StageRecord


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_hash(entry: StageEntry) -> str:
    return _hash({"name": entry.name, "config": entry.config.model_dump(mode="json")})


def stage_key(entry: StageEntry, input_hash: str, seed: int, data_id: str) -> str:
    """What a stage's result depends on: a completed stage with the same key is reused."""
    cfg = entry.config.model_dump(mode="json")
    return _hash({"name": entry.name, "config": cfg, "input": input_hash, "seed": seed, "data": data_id})


def set_threads(threads: int | None) -> None:
    """Apply the recipe's CPU thread count to torch in this process (stages also get it as
    StageInput.threads and pass it to load_generator, e.g. for onnxruntime sessions)."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when a CUDA device is available, else "cpu"; "cuda" must be available."""
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise RecipeError("device: cuda was asked for, but no CUDA device is available here")
    return "cpu"


def data_identity(data: DataBundle) -> str:
    """What the stages see of the data: every example's content (train and eval) and the options."""
    return _hash({"examples": data.fingerprint(), "options": data.options})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed % 2**32)
    import torch

    torch.manual_seed(seed)


class _Run:
    """The state of one pipeline run: its folder, manifest and the lazily loaded data."""

    def __init__(self, recipe: Recipe, run_dir: Path, device: str, console: Console):
        self.recipe, self.run_dir, self.device, self.console = recipe, run_dir, device, console
        self.manifest: dict[str, Any] = {}
        self._data = None
        self._hashes: dict[str, str] = {}

    # -- bookkeeping --------------------------------------------------------------------------
    def save(self) -> None:
        self.manifest["updated_at"] = _now()
        write_json_atomic(self.run_dir / MANIFEST, self.manifest)

    def artifact_hash(self, path: Path | None) -> str:
        if path is None:
            return "none"
        key = str(path.resolve())
        if key not in self._hashes:
            self._hashes[key] = hash_folder(path)
        return self._hashes[key]

    def rel(self, path: Path | None) -> str | None:
        if path is None:
            return None
        try:
            return path.resolve().relative_to(self.run_dir.resolve()).as_posix()
        except ValueError:
            return str(path.resolve())

    def abs(self, rel: str | None) -> Path | None:
        if rel is None:
            return None
        path = Path(rel)
        return path if path.is_absolute() else self.run_dir / path

    def data(self) -> DataBundle:
        if self._data is None:
            d = self.recipe.data
            with self.console.status(f"loading data {d.source} ..."):
                self._data = load_data(d.source, d.format, d.train, d.eval, self.recipe.seed, d.task.model_dump())
        return self._data


def run(
    recipe: Recipe,
    run_dir: Path | str | None = None,
    restart: bool = False,
    console: Console | None = None,
) -> Path:
    """Run every stage of `recipe`; return the run folder. Raises StageFailed on a stage error."""
    console = console or Console()
    device = resolve_device(recipe.device)
    set_threads(recipe.threads)
    run_dir = Path(run_dir or recipe.run_dir or Path("runs") / recipe.name)
    with quiet_run(cache_dir() / "logs" / "resolve.log"):  # a GGUF conversion's library chatter
        model = _resolve_model(recipe, console)  # before writing anything: a missing model leaves no folder
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir), quiet_run(run_dir / RUN_LOG):  # third-party warnings and logs: run.log
        if restart:
            clear_stage_folders(run_dir)
        write_text_atomic(run_dir / "recipe.resolved.yaml", dump_resolved(recipe))
        final = run_dir / "final"
        if final.is_symlink():
            final.unlink()  # `final` exists only while the whole run is complete
        state = _Run(recipe, run_dir, device, console)
        try:
            _run_stages(state, model, old_records(run_dir))
        except StageFailed:
            build_report(run_dir)  # the report shows the failure too
            raise
        except BaseException as exc:  # model or data could not be loaded, Ctrl-C, ...
            if state.manifest:
                state.manifest.update(status="failed", error=" ".join(str(exc).split()) or type(exc).__name__)
                state.save()
            raise
        _finish(state)
    return run_dir


def _resolve_model(r: Recipe, console: Console) -> Path:
    console.print(f"[bold]model[/] {r.model}")
    return Path(
        resolve_model(
            r.model,
            task=r.data.task.model_dump(),
            seed=r.seed,
            trust_remote_code=r.trust_remote_code,
            progress=True,
        )
    )


def _run_stages(state: _Run, model: Path, old: dict[str, dict[str, Any]]) -> None:
    r = state.recipe
    data_id = data_identity(state.data())  # loaded once, before the first stage
    state.manifest = {
        "name": r.name,
        "model": r.model,
        "model_path": str(model.resolve()),
        "seed": r.seed,
        "device": state.device,
        "data_identity": data_id,
        "recipe": "recipe.resolved.yaml",
        "status": "running",
        "started_at": _now(),
        "stages": [_pending(i, e) for i, e in enumerate(r.stages, 1)],
    }
    state.save()
    artifact: Path | None = model
    total = len(r.stages)
    for i, entry in enumerate(r.stages, 1):
        record = state.manifest["stages"][i - 1]
        input_hash = state.artifact_hash(artifact)
        record.update(input_artifact_hash=input_hash, key=stage_key(entry, input_hash, r.seed, data_id))
        prev = old.get(record["folder"])
        if _reusable(state, prev, record):
            record.update(
                {
                    k: prev[k]
                    for k in ("metrics", "timings", "artifact", "artifact_hash", "started_at", "finished_at", "extra")
                    if k in prev
                }
            )
            record.update(status="skipped", reused=True)  # done by an earlier run, unchanged
            state.console.print(f"[dim]↷ [{i}/{total}] {record['folder']} skipped (unchanged)[/]")
            state.save()
        else:
            _run_one(state, i, total, entry, record, artifact, model)
        artifact = state.abs(record["artifact"])
    state.manifest["status"] = "completed"
    state.manifest["finished_at"] = _now()
    state.save()


def _pending(index: int, entry: StageEntry) -> dict[str, Any]:
    return {
        "index": index,
        "name": entry.name,
        "folder": f"{index:02d}-{entry.name}",
        "config": entry.config.model_dump(mode="json"),
        "config_hash": config_hash(entry),
        "input_kind": entry.input_kind,
        "output_kind": entry.output_kind,
        "status": "pending",
        "metrics": {},
        "timings": {},
        "artifact": None,
    }


def _reusable(state: _Run, prev: dict[str, Any] | None, record: dict[str, Any]) -> bool:
    if not prev or prev.get("status") not in ("completed", "skipped") or prev.get("key") != record["key"]:
        return False
    if not (state.run_dir / record["folder"]).is_dir():
        return False
    artifact = state.abs(prev.get("artifact"))
    return artifact is None or artifact.exists()


def _run_one(
    state: _Run, i: int, total: int, entry: StageEntry, record: dict[str, Any], artifact: Path | None, model: Path
) -> None:
    data = state.data()
    reroute()  # console handlers of libraries imported by earlier stages go to run.log too
    final = state.run_dir / record["folder"]
    workdir, resumed = prepare_workdir(final, record["key"])
    note = " (resuming)" if resumed else ""
    state.console.rule(f"[bold][{i}/{total}] {record['folder']}[/]{note}")
    record.update(status="running", started_at=_now(), metrics={}, timings={}, artifact=None)
    record.pop("error", None)
    state.save()
    inp = StageInput(
        artifact=artifact,
        model=model,
        data=data,
        workdir=workdir,
        run_dir=state.run_dir,
        device=state.device,
        seed=state.recipe.seed,
        history=_history(state, i),
        threads=state.recipe.threads,
    )
    seed_everything(state.recipe.seed)
    t0 = time.perf_counter()
    try:
        out = STAGES[entry.name].run(entry.config, inp)
    except BaseException as exc:
        _fail(state, record, exc, time.perf_counter() - t0)
        if isinstance(exc, Exception):
            raise StageFailed(i, entry.name, record["error"], str(state.run_dir / ERROR_LOG)) from exc
        raise
    wall = time.perf_counter() - t0
    _complete(state, record, out, workdir, final, wall)
    state.console.print(
        f"[green]✓[/] {record['folder']} completed in {wall:.1f}s  {_brief(record['metrics'])}", soft_wrap=True
    )


def _history(state: _Run, i: int) -> list[StageRecord]:
    return [
        StageRecord(
            index=r["index"], name=r["name"], artifact=state.abs(r["artifact"]), metrics=dict(r.get("metrics", {}))
        )
        for r in state.manifest["stages"][: i - 1]
    ]


def _fail(state: _Run, record: dict[str, Any], exc: BaseException, wall: float) -> None:
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        message = "interrupted"
    elif not message.startswith(type(exc).__name__):
        message = f"{type(exc).__name__}: {message}"
    log = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    write_text_atomic(state.run_dir / ERROR_LOG, f"{_now()} stage {record['folder']}\n{log}")
    record.update(status="failed", error=message, finished_at=_now(), timings={"wall_s": wall})
    state.manifest.update(status="failed", finished_at=_now())
    state.save()


def _complete(state: _Run, record: dict[str, Any], out: Any, workdir: Path, final: Path, wall: float) -> None:
    metrics = {k: v for k, v in (out.metrics or {}).items() if isinstance(v, (int, float))}
    timings = {**{k: float(v) for k, v in (out.timings or {}).items()}, "wall_s": wall}
    extra = dict(out.extra or {})
    write_json_atomic(workdir / "metrics.json", {"metrics": metrics, "timings": timings})
    if extra.get("report_md"):
        write_text_atomic(workdir / "report_section.md", str(extra["report_md"]))
    artifact = out.artifact
    if artifact is not None:
        artifact = Path(artifact)
        with contextlib.suppress(ValueError):  # inside the workdir: it moves with the rename
            inner = artifact.resolve().relative_to(workdir.resolve())
            _complete_meta(workdir / inner, record, metrics, state.rel(_input_of(state, record)))
            artifact = final / inner
    replace_dir(workdir, final)
    record.update(
        status="completed",
        finished_at=_now(),
        metrics=metrics,
        timings=timings,
        artifact=state.rel(artifact),
        artifact_hash=state.artifact_hash(artifact),
        extra={"plots": list(extra.get("plots", []))} if extra.get("plots") else {},
    )
    state.save()


def _input_of(state: _Run, record: dict[str, Any]) -> Path | None:
    """The artifact the stage of `record` received (the previous stage's, or the model)."""
    i = record["index"]
    if i == 1:
        return Path(state.manifest["model_path"])
    return state.abs(state.manifest["stages"][i - 2].get("artifact"))


def _complete_meta(folder: Path, record: dict[str, Any], metrics: dict[str, Any], parent: str | None) -> None:
    """Make sure a new artifact's slm_meta.json carries its lineage (stages may write more)."""
    meta = read_meta(folder)
    filled = {"kind": record["output_kind"], "stage": record["folder"], "parent": parent, "metrics": metrics}
    if all(k in meta for k in filled):
        return
    write_meta(folder, **{**filled, **meta})


def _brief(metrics: dict[str, Any]) -> str:
    keys = ("accuracy", "retention", "params", "bytes", "latency_ms_median")
    return "  ".join(f"{k}={_fmt(metrics[k])}" for k in keys if k in metrics)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _finish(state: _Run) -> None:
    last = next((state.abs(r["artifact"]) for r in reversed(state.manifest["stages"]) if r.get("artifact")), None)
    if last is not None:
        link_final(state.run_dir, last)
    report = build_report(state.run_dir)
    state.console.print(f"[bold green]done[/] report: {report}")
