"""Quiet runs: third-party warnings and log lines go to the run's log file, not the console.

A normal `slm run` on a real model would otherwise print torchao's "Failed to load ... .so"
lines (transformers imports torchao whenever it is installed), torch's pytree deprecations,
pages of ONNX TracerWarnings, onnxruntime's quantizer advice and transformers' notices. Inside
`quiet_run(log_file)`:

- every Python warning is written to the log file, except those raised from slm_toolkit's own
  code (a data file with fewer examples than asked is the user's business): those still go to
  the console, and to the file;
- every logger outside slm_toolkit logs to the file only: stream handlers that libraries
  attached to their own loggers (torch, transformers) are detached for the duration and their
  records propagate to the root logger, which writes the file; slm_toolkit's own warnings also
  reach the console;
- on exit everything is put back as it was.

Libraries that attach their console handler when first imported (torch, transformers, optimum)
are imported when the block starts, so there is a handler to detach; one imported later inside a
stage is caught by calling `reroute()` again, which the pipeline does before every stage.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

OWN = "slm_toolkit"
RUN_LOG = "run.log"  # in the run folder
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


class _State:
    """What quiet_run changed, to restore on exit."""

    def __init__(self) -> None:
        self.detached: list[tuple[logging.Logger, logging.Handler]] = []
        self.propagate: dict[str, bool] = {}
        self.active = False


_STATE = _State()
# Imported when a quiet block starts: each attaches its console handler at import time.
_SELF_CONFIGURING = ("torch", "transformers.utils.logging", "optimum.utils.logging")


def _is_console(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return (
        isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
        and (stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__))
    )


def reroute() -> None:
    """Detach console handlers of every third-party logger that exists now (idempotent)."""
    if not _STATE.active:
        return
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or name == OWN or name.startswith(OWN + "."):
            continue
        for handler in [h for h in logger.handlers if _is_console(h)]:
            logger.removeHandler(handler)
            _STATE.detached.append((logger, handler))
        if not logger.propagate:
            _STATE.propagate.setdefault(name, False)
            logger.propagate = True


@contextlib.contextmanager
def quiet_run(log_file: Path | str, console: bool = True) -> Iterator[Path]:
    """Route third-party warnings and logging to `log_file` (appended) for the duration."""
    if _STATE.active:  # nested (e.g. `slm eval` inside a run): the outer block already routes
        yield Path(log_file)
        return
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    old_root = (list(root.handlers), root.level)
    own = logging.getLogger(OWN)
    own_console = logging.StreamHandler(sys.stderr)
    own_console.setLevel(logging.WARNING)
    own_console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    old_showwarning = warnings.showwarning
    _STATE.active = True
    try:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(file_handler)
        root.setLevel(logging.INFO)
        if console:
            own.addHandler(own_console)
        warnings.showwarning = _showwarning(file_handler, console)
        _import_self_configuring()
        reroute()
        yield log_file
    finally:
        warnings.showwarning = old_showwarning
        own.removeHandler(own_console)
        root.removeHandler(file_handler)
        file_handler.close()
        for handler in old_root[0]:
            root.addHandler(handler)
        root.setLevel(old_root[1])
        for logger, handler in _STATE.detached:
            logger.addHandler(handler)
        for name, value in _STATE.propagate.items():
            logging.getLogger(name).propagate = value
        _STATE.detached.clear()
        _STATE.propagate.clear()
        _STATE.active = False


def _import_self_configuring() -> None:
    import importlib

    for name in _SELF_CONFIGURING:
        with contextlib.suppress(ImportError):
            module = importlib.import_module(name)
            if hasattr(module, "get_logger"):  # transformers / optimum attach their handler on first use
                module.get_logger()


def _showwarning(file_handler: logging.Handler, console: bool):
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
        record = logging.LogRecord("py.warnings", logging.WARNING, filename, lineno, text, None, None)
        file_handler.handle(record)
        if console and str(filename).startswith(_PACKAGE_DIR):
            print(f"warning: {message}", file=sys.stderr)

    return show
