"""A real `uvicorn --workers 2`: metrics add up across worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._tools import free_port
from tests.api_support import CUSTOMER, metric_value, wait_until
from tests.conftest import ROOT, TrainedModel

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def server(trained_model: TrainedModel, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "MODEL_PATH": str(trained_model.model_path),
        "MODEL_REQUIRED": "true",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'log.db'}",
        "LOG_LEVEL": "WARNING",
        "ENVIRONMENT": "test",
    }
    log = (tmp_path / "uvicorn.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def both_ready() -> bool:
            try:
                return httpx.get(f"{url}/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return process.poll() is not None

        assert wait_until(both_ready, timeout=60), (tmp_path / "uvicorn.log").read_text()
        assert process.poll() is None, (tmp_path / "uvicorn.log").read_text()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_counts_add_up_across_workers(server: str) -> None:
    n = 60
    for _ in range(n):
        # A new connection each time, so the kernel spreads requests over both workers.
        with httpx.Client(base_url=server, timeout=10) as client:
            response = client.post("/predict", json=CUSTOMER)
            assert response.status_code == 200
    text = httpx.get(f"{server}/metrics", timeout=10).text
    assert metric_value(text, "predictions_total") == n
    assert metric_value(text, "prediction_latency_seconds_count") == n
    assert metric_value(text, "prediction_probability_count") == n
    assert metric_value(text, "http_requests_total", route="/predict", status="200") == n
    assert metric_value(text, "model_info") >= 1
