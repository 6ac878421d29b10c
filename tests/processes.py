"""Starting and stopping the real processes integration tests drive (uvicorn, servers)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests._tools import free_port

ROOT = Path(__file__).resolve().parents[1]


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Terminate a process we started, killing it if it ignores SIGTERM."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def _wait_for_workers(
    url: str,
    log_path: Path,
    workers: int,
    process: subprocess.Popen[bytes],
    timeout: float,
    probe: str = "/ready",
) -> None:
    """`probe` answers 200 and every worker has logged its start-up (requests may hit any)."""
    from tests.mlflow_server import wait_http

    wait_http(f"{url}{probe}", timeout, process)
    deadline = time.monotonic() + timeout
    while log_path.read_text(errors="replace").count("Application startup complete") < workers:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"not all {workers} workers started")
        time.sleep(0.2)


@contextlib.contextmanager
def api_server(
    env: Mapping[str, str],
    log_path: Path,
    workers: int = 1,
    timeout: float = 120.0,
    probe: str = "/ready",
) -> Iterator[str]:
    """`uvicorn app.main:app` on a free loopback port, as the image runs it; yields its URL
    once `probe` answers 200 (``/health`` for a server that is not expected to be ready)."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*argv, "--port", str(port), "--workers", str(workers)],
            cwd=ROOT,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            _wait_for_workers(url, log_path, workers, process, timeout, probe)
        except (TimeoutError, RuntimeError) as exc:
            tail = log_path.read_text(errors="replace")[-4000:]
            raise AssertionError(f"API did not start: {exc}\n{tail}") from exc
        yield url
    finally:
        stop_process(process)
