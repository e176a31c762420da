"""The run report: artifacts named by what they are, meaningless perplexity as "—", the plot."""

from __future__ import annotations

import json

from slm_toolkit import report as R


def _rec(name: str, config: dict | None = None, **metrics) -> dict:
    return {"name": name, "config": config or {}, "metrics": metrics, "status": "completed"}


CHAIN = [
    _rec("evaluate", accuracy=0.30, bytes=540e6, latency_ms_median=900, ppl_cot=4.8, ppl_prompt=9e5, vocab_size=49152),
    _rec("evaluate", {"model": "builtin:arith-student"}, accuracy=0.01, bytes=40e6, latency_ms_median=100),
    _rec("distill", {"student": "builtin:arith-student"}),
    _rec("evaluate", accuracy=0.20, bytes=40e6, latency_ms_median=100, ppl_cot=6.0, vocab_size=49152),
    _rec("prune", {"heads": 0.3}),
    _rec("evaluate", accuracy=0.10, bytes=25e6, latency_ms_median=70, ppl_cot=9.0, vocab_size=49152),
    _rec("distill", {"student": "previous", "truncate": {"fraction": 0.5}}),
    _rec("evaluate", accuracy=0.18, bytes=25e6, latency_ms_median=70, ppl_cot=6.5, vocab_size=49152),
    _rec("export", {"format": "onnx"}),
    _rec("quantize", {"scheme": "ort_int8_dynamic"}),
    _rec("evaluate", accuracy=0.17, bytes=7e6, latency_ms_median=30, ppl_cot=6.6, vocab_size=49152),
    _rec("quantize", {"scheme": "ort_int4"}),
    _rec("evaluate", accuracy=0.15, bytes=4e6, latency_ms_median=25, ppl_cot=7.0, vocab_size=49152),
]


def test_each_evaluated_artifact_is_named_by_what_it_is():
    names = [R.artifact_label(CHAIN, i) for i, r in enumerate(CHAIN) if r["name"] == "evaluate"]
    assert names == ["teacher", "base student", "distilled", "pruned", "healed, first 50%", "int8 ONNX", "int4 ONNX"]
    assert R.artifact_label([_rec("prune"), _rec("distill", {"student": "previous"}), _rec("evaluate")], 2) == "healed"
    assert R.artifact_label([_rec("export"), _rec("evaluate")], 1) == "ONNX fp32"


def test_rows_show_meaningless_perplexity_as_a_dash():
    row = R.stage_row({**CHAIN[0], "folder": "01-evaluate"}, "teacher")
    assert row[0] == "01-evaluate (teacher)" and row[7] == "4.800"
    worse_than_uniform = _rec("evaluate", ppl_cot=169149.0, vocab_size=40)
    assert R.stage_row(worse_than_uniform)[7] == R.DASH


def test_plot_path_log_axis_and_labels_that_do_not_overlap(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = R._points(CHAIN, "bytes", "accuracy", 1e6)
    assert [on for *_, on in pts] == [True, False, True, True, True, True, True]  # the base student is a side point
    fig, ax = plt.subplots(figsize=(5, 4))
    R._draw_panel(ax, pts, "size (MB)", "accuracy")
    assert ax.get_xscale() == "log"  # 4 MB .. 540 MB
    fig.canvas.draw()
    R._place_labels(ax, pts)
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_text()]  # arrows are empty annotations
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert [t.get_text() for t in labels] == [label for label, *_ in pts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    # the chain's arrows: teacher -> distilled -> pruned -> healed -> int8 -> int4
    assert len([t for t in ax.texts if not t.get_text()]) == 5
    plt.close(fig)
    narrow = [("a", 10.0, 0.1, True), ("b", 50.0, 0.2, True)]
    fig, ax = plt.subplots()
    R._draw_panel(ax, narrow, "size", "acc")
    assert ax.get_xscale() == "linear"
    plt.close(fig)


def test_report_file(tmp_path):
    stages = [dict(r, folder=f"{i + 1:02d}-{r['name']}", index=i + 1) for i, r in enumerate(CHAIN)]
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "r", "stages": stages, "status": "completed"}))
    text = R.build_report(tmp_path).read_text()
    assert "| 13-evaluate (int4 ONNX) | completed |" in text and "| 01-evaluate (teacher) |" in text
    assert (tmp_path / "report.png").stat().st_size > 1000
