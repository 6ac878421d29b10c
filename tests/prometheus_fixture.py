"""Start real Prometheus (and Pushgateway) processes for tests, and talk to them.

Used by tests/test_grafana_dashboard.py and meant for integration tests that scrape a live API:
`localized_config` turns the repository's monitoring/prometheus.yml into a config for a test
(targets on loopback, short intervals, the repo's rule files), so the scrape config under test
is the real one, not a hand-written copy.

Typical use::

    port = free_port()
    config = localized_config(tmp / "prometheus.yml", port, {"churn-api": f"127.0.0.1:{api}"})
    with running_prometheus(config, port, tmp / "data") as base_url:
        wait_for_series(base_url, 'up{job="churn-api"} == 1')
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests._tools import require_binary

REPO_ROOT = Path(__file__).resolve().parents[1]
MONITORING_DIR = REPO_ROOT / "monitoring"
PROMETHEUS_CONFIG = MONITORING_DIR / "prometheus.yml"

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class ProcessStartError(RuntimeError):
    """A test service did not become ready; the message carries the tail of its log."""


def _log_tail(log_path: Path, lines: int = 30) -> str:
    """Last lines of a process log, for error messages."""
    if not log_path.exists():
        return "(no log written)"
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def wait_ready(
    proc: subprocess.Popen[bytes],
    ready_url: str,
    log_path: Path,
    timeout: float = STARTUP_TIMEOUT_S,
) -> None:
    """Poll `ready_url` until it answers 200; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ProcessStartError(
                f"{proc.args!r} exited with code {proc.returncode} before {ready_url} was "
                f"ready. Log tail:\n{_log_tail(log_path)}"
            )
        try:
            if httpx.get(ready_url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.1)
    raise ProcessStartError(
        f"{ready_url} was not ready after {timeout:.0f}s. Log tail:\n{_log_tail(log_path)}"
    )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """Terminate a process we started, killing it if it ignores SIGTERM."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _start_service(argv: list[str], ready_url: str, log_path: Path) -> subprocess.Popen[bytes]:
    """Start `argv` with output to `log_path` and wait until `ready_url` answers."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, ready_url, log_path)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def start_prometheus(config_path: Path, port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    """Start Prometheus on 127.0.0.1:`port` with `config_path`, ready to query.

    The TSDB and the log (prometheus.log) go to `data_dir`. The caller stops the process with
    `stop_process` (or uses `running_prometheus`). Lifecycle endpoints are enabled so a test
    can POST /-/reload after rewriting the config.
    """
    binary = require_binary("prometheus")
    argv = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={data_dir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]
    return _start_service(argv, f"http://127.0.0.1:{port}/-/ready", data_dir / "prometheus.log")


def start_pushgateway(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    """Start a Pushgateway on 127.0.0.1:`port` (in-memory, log in `data_dir`)."""
    binary = require_binary("prometheus-pushgateway")
    argv = [binary, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    return _start_service(argv, f"http://127.0.0.1:{port}/-/ready", data_dir / "pushgateway.log")


@contextmanager
def running_prometheus(config_path: Path, port: int, data_dir: Path) -> Iterator[str]:
    """Run Prometheus for the duration of the block; yields its base URL."""
    proc = start_prometheus(config_path, port, data_dir)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def _local_rule_files(config: Mapping[str, Any], rules_dir: Path) -> list[str]:
    """Copy the repo's rule files into `rules_dir` without group `interval` overrides.

    A group with `interval: 5m` would first be evaluated up to 5 minutes after start; in a
    test every group must run at the (short) global evaluation interval. Expressions are
    copied unchanged.
    """
    rules_dir.mkdir(parents=True, exist_ok=True)
    copies: list[str] = []
    for pattern in config.get("rule_files", []):
        for source in sorted(PROMETHEUS_CONFIG.parent.glob(pattern)):
            rules = yaml.safe_load(source.read_text())
            for group in rules.get("groups", []):
                group.pop("interval", None)
            target = rules_dir / f"{source.parent.name}_{source.name}"
            target.write_text(yaml.safe_dump(rules, sort_keys=False))
            copies.append(str(target))
    if not copies:
        raise FileNotFoundError(f"{PROMETHEUS_CONFIG}: rule_files matched no file")
    return copies


def localized_config(
    dest: Path,
    prometheus_port: int,
    targets: Mapping[str, str],
    *,
    interval: str = "1s",
) -> Path:
    """Write a test copy of monitoring/prometheus.yml to `dest` and return its path.

    - scrape jobs named in `targets` scrape that host:port instead of the compose host name;
      the `prometheus` job always scrapes this Prometheus itself; other jobs are dropped, so
      a test only scrapes what it started;
    - scrape and evaluation intervals become `interval`;
    - rule files are the repo's, copied beside `dest` (see `_local_rule_files`).
    """
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    wanted = {**targets, "prometheus": f"127.0.0.1:{prometheus_port}"}
    known = {job["job_name"] for job in config["scrape_configs"]}
    unknown = set(targets) - known
    if unknown:
        raise KeyError(f"{PROMETHEUS_CONFIG} has no scrape job(s) {sorted(unknown)}; jobs: {known}")
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] in wanted:
            job["static_configs"] = [{"targets": [wanted[job["job_name"]]]}]
            jobs.append(job)
    config["scrape_configs"] = jobs
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    config["rule_files"] = _local_rule_files(config, dest.parent / "rules")
    dest.write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def instant_query(base_url: str, expr: str) -> dict[str, Any]:
    """POST an instant query and return Prometheus's JSON answer (status, data or error).

    A PromQL error is an HTTP 400 with status "error" in the body, so the body is returned
    whatever the HTTP status; callers assert on body["status"].
    """
    response = httpx.post(f"{base_url}/api/v1/query", data={"query": expr}, timeout=10.0)
    body: dict[str, Any] = response.json()
    return body


def wait_for(condition: Callable[[], bool], what: str, timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Poll `condition` until it holds; raise TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def has_series(base_url: str, expr: str) -> bool:
    """True when `expr` evaluates successfully to at least one series."""
    body = instant_query(base_url, expr)
    return body["status"] == "success" and bool(body["data"]["result"])


def wait_for_series(base_url: str, expr: str, timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Wait until `expr` returns at least one series (e.g. after the first scrapes)."""
    wait_for(lambda: has_series(base_url, expr), f"series for {expr!r}", timeout)
