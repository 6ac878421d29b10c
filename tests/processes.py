"""Starting and stopping the real processes integration tests drive (uvicorn, servers)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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


@dataclass
class ApiProcess:
    """A running `uvicorn app.main:app`: its URL, process (the supervisor with --workers)
    and the file its output goes to."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def worker_pids(self) -> list[int]:
        """The live uvicorn worker processes (the supervisor itself with one worker)."""
        workers = [
            pid
            for pid in _children(self.process.pid)
            if b"spawn_main" in _cmdline(pid) and b"resource_tracker" not in _cmdline(pid)
        ]
        return workers or [self.process.pid]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _children(parent: int) -> list[int]:
    """Processes whose parent is `parent`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return sorted(found)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@contextlib.contextmanager
def api_process(
    env: Mapping[str, str],
    log_path: Path,
    workers: int = 1,
    timeout: float = 120.0,
    probe: str = "/ready",
) -> Iterator[ApiProcess]:
    """`uvicorn app.main:app` on a free loopback port, with the image's options, once `probe`
    answers 200 (``/health`` for a server not expected to be ready); stopped (SIGTERM, then
    SIGKILL after 20 s) on exit unless the test ended it already."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*argv, "--port", str(port), "--workers", str(workers), "--no-server-header"],
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
        yield ApiProcess(url, process, log_path)
    finally:
        stop_process(process)


@contextlib.contextmanager
def api_server(
    env: Mapping[str, str],
    log_path: Path,
    workers: int = 1,
    timeout: float = 120.0,
    probe: str = "/ready",
) -> Iterator[str]:
    """`uvicorn app.main:app` on a free loopback port, as the image runs it; yields its URL."""
    with api_process(env, log_path, workers, timeout, probe) as api:
        yield api.url
