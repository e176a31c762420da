"""Start `slm serve ARTIFACT` on a free loopback port in a subprocess, wait for /ready, stop it
with SIGTERM (the server drains, then exits). Used by `slm bench --artifact` and the bench stage."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(
    artifact: Path,
    port: int,
    backend: str = "auto",
    scheduler: str = "continuous",
    max_batch_size: int | None = None,
    device: str | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "slm_toolkit.cli",
        "serve",
        str(artifact),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend",
        backend,
        "--scheduler",
        scheduler,
    ]
    if max_batch_size:
        cmd += ["--max-batch-size", str(max_batch_size)]
    if device:
        cmd += ["--device", device]
    return cmd + (extra or [])


def wait_ready(
    url: str, proc: subprocess.Popen | None, timeout_s: float, path: str = "/ready", log: Path | None = None
) -> float:
    """Poll url+path until 200; seconds waited. Raises if the process dies or time runs out."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.is_file() else ""
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready:\n{tail}")
        try:
            if httpx.get(url + path, timeout=2.0).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the server at {url} was not ready after {timeout_s:.0f} s")


def stop(proc: subprocess.Popen, timeout_s: float = 30.0) -> int:
    """SIGTERM, wait for the drain; SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextmanager
def launched(
    cmd: list[str],
    log: Path,
    ready_path: str = "/ready",
    timeout_s: float = 300.0,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `cmd` (a server listening on 127.0.0.1:port) with output to `log`; yield (base URL, process)."""
    if port is None:
        port = int(cmd[cmd.index("--port") + 1])
    url = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        try:
            wait_ready(url, proc, timeout_s, ready_path, log)
            yield url, proc
        finally:
            stop(proc)


def serve_artifact(artifact: Path, log: Path, **kwargs) -> contextmanager:
    """`slm serve ARTIFACT` on a free loopback port: a context manager yielding (URL, process)."""
    return launched(serve_command(artifact, free_port(), **kwargs), log)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
