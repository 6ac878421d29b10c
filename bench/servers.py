"""Start, probe, measure and stop the HTTP servers under test, one uvicorn worker each.

Every server runs as its own process group on a free loopback port, optionally pinned to one
core (``taskset``) so the load generator gets the other; start-up time is measured from the
spawn to the first 200 on the server's readiness path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class ServerStartError(RuntimeError):
    """A server did not become ready; the message carries the tail of its log."""


@dataclass(frozen=True)
class ServerSpec:
    """How to run one server: argv, extra environment, and the paths the benchmark uses."""

    name: str
    label: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/health"
    predict_path: str = "/predict"
    health_path: str = "/health"
    batch_path: str | None = None
    # "service": {"customers": [...]}; "mlflow": {"dataframe_records": [...]}; "plain": one object
    body_format: str = "plain"


@dataclass
class RunningServer:
    spec: ServerSpec
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    startup_s: float = float("nan")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    """argv run under ``taskset -c cpu`` (unchanged when cpu is None or taskset is missing)."""
    taskset = shutil.which("taskset")
    if cpu is None or taskset is None:
        return argv
    return [taskset, "-c", str(cpu), *argv]


def uvicorn_argv(target: str, *extra: str) -> list[str]:
    """One uvicorn worker on loopback; ``{port}`` is filled in when the server starts."""
    argv = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", "{port}"]
    return [*argv, "--workers", "1", *extra]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (loopback URL)
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(
    spec: ServerSpec, port: int, log_dir: Path, cpu: int | None, timeout: float = 120.0
) -> RunningServer:
    """Spawn the server and wait for its readiness path to answer 200."""
    log_path = log_dir / f"{spec.name}.log"
    # The venv's bin first: `mlflow models serve` runs `uvicorn` from PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, **spec.env, "PYTHONPATH": str(ROOT), "PATH": path}
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            pinned(spec.argv, cpu),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends workers too
        )
    server = RunningServer(spec, port, process, log_path)
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise ServerStartError(
                f"{spec.label} exited with status {process.returncode} before it was ready; "
                f"log {log_path}:\n{_log_tail(log_path)}"
            )
        if _ready(server.url(spec.ready_path)):
            server.startup_s = time.perf_counter() - started
            return server
        time.sleep(0.05)
    stop(server)
    raise ServerStartError(
        f"{spec.label} was not ready on {spec.ready_path} within {timeout:.0f}s; "
        f"log {log_path}:\n{_log_tail(log_path)}"
    )


def stop(server: RunningServer, timeout: float = 15.0) -> None:
    """SIGTERM the server's process group, SIGKILL it if it does not exit in time."""
    if server.process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(5)


@contextlib.contextmanager
def running(
    spec: ServerSpec, log_dir: Path, cpu: int | None, port: int | None = None
) -> Iterator[RunningServer]:
    port = port or free_port()
    argv = [a.replace("{port}", str(port)) for a in spec.argv]
    server = start(ServerSpec(**{**spec.__dict__, "argv": argv}), port, log_dir, cpu)
    try:
        yield server
    finally:
        stop(server)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 (after the parenthesised command, which may contain spaces) is the ppid.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def resident_memory(pid: int) -> dict[str, float]:
    """RSS in MiB of the process tree under `pid` (taskset execs, so pid is the server).

    ``worker_mb`` is the largest single process (the uvicorn worker that holds the model);
    ``tree_mb`` adds launchers such as ``mlflow models serve``'s parent process.
    """
    pids, frontier = [pid], [pid]
    while frontier:
        frontier = [c for p in frontier for c in _children(p)]
        pids += frontier
    sizes = [_rss_mb(p) for p in pids]
    return {"worker_mb": max(sizes, default=0.0), "tree_mb": sum(sizes), "processes": len(pids)}
