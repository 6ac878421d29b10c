"""A real `mlflow server` on loopback for integration tests (sqlite or PostgreSQL backend)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests._tools import free_port, missing

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def postgres_database(prefix: str = "churn_test") -> Iterator[str]:
    """A fresh PostgreSQL database on this machine's server, dropped afterwards."""
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        conn = psycopg2.connect(PG_ADMIN_URL, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        missing(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
        raise
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        server = PG_ADMIN_URL.removeprefix("postgresql://").rsplit("/", 1)[0]
        yield f"postgresql+psycopg2://{server}/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def wait_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
                if response.status == 200:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout}s ({last})")


@contextlib.contextmanager
def mlflow_server(
    backend_uri: str,
    workdir: Path,
    timeout: float = 90,
    port: int | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Start `mlflow server` with served artifacts; yield its tracking URI. `port` (default: a
    free one) lets a test restart a stopped server where its clients expect it; `env` adds
    to its environment (e.g. the MLFLOW_WEBHOOK_* settings)."""
    port = port or free_port()
    artifacts = workdir / "mlartifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    log = (workdir / f"mlflow-server-{port}.log").open("ab")  # a restart appends
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    process = subprocess.Popen(
        [
            mlflow_bin,
            "server",
            "--backend-store-uri",
            backend_uri,
            "--artifacts-destination",
            str(artifacts),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=workdir,
        # The huey job runners (GenAI trace jobs) are a dozen extra processes this project
        # never uses; on 2 cores they slow every start-up and request.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
