"""Quiet runs: third-party warnings and loggers go to the run's log file, ours still reach the console."""

from __future__ import annotations

import logging
import sys
import warnings

from slm_toolkit.core import runlog
from slm_toolkit.core.runlog import quiet_run, reroute


def test_third_party_output_goes_to_the_log_file(tmp_path, capfd):
    lib = logging.getLogger("fakelib")  # a library that prints through its own console handler
    own_handler = logging.StreamHandler(sys.stderr)
    lib.addHandler(own_handler)
    lib.propagate = False
    log = tmp_path / "run.log"
    try:
        with quiet_run(log), warnings.catch_warnings():
            warnings.simplefilter("always")  # whatever filter the test run set (-W ignore)
            lib.warning("Failed to load _C_mxfp8.so")
            logging.warning("Please consider to run pre-processing before quantization")  # the root logger
            warnings.warn_explicit("TracerWarning: converting a tensor to a Python boolean", UserWarning, "x.py", 3)
            logging.getLogger("slm_toolkit.data.loaders").warning("only 10 examples")
            warnings.warn_explicit("the file has 5 examples", UserWarning, runlog.__file__, 1)
            late = logging.getLogger("latelib")  # imported mid-run with a console handler of its own
            late.addHandler(logging.StreamHandler(sys.stderr))
            late.propagate = False
            reroute()
            late.warning("late chatter")
        err = capfd.readouterr().err
        text = log.read_text()
        for line in ("Failed to load", "pre-processing", "TracerWarning", "only 10 examples", "late chatter"):
            assert line in text
        assert "Failed to load" not in err and "TracerWarning" not in err and "late chatter" not in err
        assert "pre-processing" not in err
        assert "only 10 examples" in err and "the file has 5 examples" in err  # ours stay visible
        # everything is put back afterwards
        assert own_handler in lib.handlers and lib.propagate is False
        lib.warning("after the run")
        assert "after the run" in capfd.readouterr().err and "after the run" not in log.read_text()
    finally:
        lib.removeHandler(own_handler)
        lib.propagate = True
        logging.getLogger("latelib").handlers.clear()


def test_nested_blocks_keep_the_outer_file(tmp_path):
    with quiet_run(tmp_path / "outer.log"):
        with quiet_run(tmp_path / "inner.log"):
            logging.getLogger("otherlib").warning("inside")
    assert "inside" in (tmp_path / "outer.log").read_text() and not (tmp_path / "inner.log").exists()


def test_optional_heavy_libraries_are_imported_only_by_the_stages_that_use_them():
    """Importing the CLI, the pipeline and every stage's module imports none of torchao,
    bitsandbytes, TensorRT or the ONNX exporter: those load inside the stage that needs them."""
    import subprocess

    code = (
        "import sys\n"
        "import slm_toolkit.cli, slm_toolkit.pipeline, slm_toolkit.evaluate.stage, slm_toolkit.prune.stage\n"
        "import slm_toolkit.distill.stage, slm_toolkit.quantize.stage, slm_toolkit.export.stage\n"
        "import slm_toolkit.runtime.torch, slm_toolkit.runtime.onnxruntime, slm_toolkit.bench.stage\n"
        "print([m for m in ('torchao', 'bitsandbytes', 'tensorrt', 'optimum.exporters') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
