"""A real `uvicorn --workers 2`: metrics add up across worker processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api_support import CUSTOMER, metric_value
from tests.conftest import TrainedModel
from tests.processes import api_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def server(trained_model: TrainedModel, tmp_path: Path) -> Iterator[str]:
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
    with api_server(env, tmp_path / "uvicorn.log", workers=2) as url:
        yield url


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
