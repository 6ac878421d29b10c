"""Load generation with wrk (C, one thread): fixed connections, warm-up, fixed duration.

wrk is a closed loop: each connection sends its next request when the previous answer
arrives, so throughput is what the server sustains at that concurrency and latency is
measured per request. Errors are socket errors plus responses with status >= 400.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.servers import pinned

SCRIPT = Path(__file__).with_name("wrk_report.lua")
MARKER = "BENCH_JSON "


class LoadGeneratorError(RuntimeError):
    """wrk is missing or did not report; the message says what to install or what it printed."""


@dataclass(frozen=True)
class Load:
    """One load shape: connections and seconds; `body` is None for GET."""

    url: str
    connections: int
    seconds: float
    body: Path | None = None
    timeout_s: float = 30.0
    routing_keys: int = 0  # > 0: an X-Routing-Key header cycling over this many customers


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise LoadGeneratorError("wrk is not installed: apt-get install -y wrk")
    return path


def start_wrk(load: Load, cpu: int | None) -> subprocess.Popen[str]:
    """Start wrk in the background (for running two loads at once); see `collect`."""
    seconds = max(1, math.ceil(load.seconds))
    argv = [
        wrk_binary(),
        "-t1",
        f"-c{load.connections}",
        f"-d{seconds}s",
        f"--timeout={load.timeout_s:g}s",
        "-s",
        str(SCRIPT),
        load.url,
    ]
    env = {
        "BENCH_BODY_FILE": str(load.body) if load.body else "",
        "BENCH_ROUTING_KEYS": str(load.routing_keys),
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.Popen(
        pinned(argv, cpu), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def collect(process: subprocess.Popen[str], load: Load) -> dict[str, Any]:
    """Wait for wrk and turn its report into requests/s, latency in ms and error counts."""
    output, _ = process.communicate(timeout=load.seconds + load.timeout_s + 30)
    line = next((x for x in output.splitlines() if x.startswith(MARKER)), None)
    if line is None:
        raise LoadGeneratorError(f"wrk did not report for {load.url}:\n{output[-2000:]}")
    raw = json.loads(line[len(MARKER) :])
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in raw if k.startswith("errors_"))
    answered = raw["requests"] > 0
    # No answer in the whole window (a blocked event loop): no latency to report.
    latency = {
        name: (raw[f"{name}_us"] / 1000 if answered else None)
        for name in ("mean", "p50", "p90", "p95", "p99", "max")
    }
    return {
        "connections": load.connections,
        "seconds": round(seconds, 3),
        "requests": raw["requests"],
        "rps": raw["requests"] / seconds if seconds > 0 else 0.0,
        "errors": errors,
        "errors_status": raw["errors_status"],
        "errors_socket": errors - raw["errors_status"],
        "latency_ms": latency,
    }


def run_load(load: Load, cpu: int | None) -> dict[str, Any]:
    return collect(start_wrk(load, cpu), load)
