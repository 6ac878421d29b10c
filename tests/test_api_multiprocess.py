"""A real `uvicorn --workers 2`: metrics add up across worker processes, a reload reaches
every worker, and a killed worker leaves no stale model_info."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._tools import free_port
from tests.api_support import ADMIN_TOKEN, CUSTOMER, copy_bundle, metric_value, wait_until
from tests.conftest import TrainedModel
from tests.processes import api_server
from tests.test_api_reload import set_version

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


AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def reloadable(trained_model: TrainedModel, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Two workers serving a private copy of the bundle (re-versioned by the test)."""
    bundle = copy_bundle(trained_model.bundle_dir, tmp_path / "bundle")
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "MODEL_PATH": str(bundle),
        "MODEL_SYNC_INTERVAL": "0.2",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'log.db'}",
        "LOG_LEVEL": "WARNING",
        "ENVIRONMENT": "test",
    }
    with api_server(env, tmp_path / "uvicorn.log", workers=2) as url:
        yield url, bundle.parent


def _workers(url: str) -> list[dict[str, Any]]:
    workers: list[dict[str, Any]] = httpx.get(f"{url}/model", timeout=10).json()["workers"]
    return workers


def test_reload_reaches_every_worker(reloadable: tuple[str, Path]) -> None:
    url, bundle_dir = reloadable
    assert wait_until(lambda: len(_workers(url)) == 2, timeout=30), _workers(url)
    set_version(bundle_dir, "77")
    response = httpx.post(f"{url}/admin/reload", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["all_workers_swapped"] is True, body
    assert body["not_swapped"] == []
    assert [w["model_version"] for w in body["workers"]] == ["77", "77"]
    assert {w["generation"] for w in body["workers"]} == {body["generation"]}
    versions = set()
    for _ in range(30):
        # A new connection each time, so requests land on both workers.
        with httpx.Client(base_url=url, timeout=10) as client:
            versions.add(client.post("/predict", json=CUSTOMER).json()["model_version"])
    assert versions == {"77"}
    workers = _workers(url)
    assert len({w["pid"] for w in workers}) == 2
    assert all(w["model_version"] == "77" and w["loaded_at"] for w in workers), workers


def _model_info_pids(url: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        sample.labels["pid"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "model_info" and sample.value == 1
    }


def test_a_killed_worker_leaves_no_model_info(reloadable: tuple[str, Path]) -> None:
    url, _ = reloadable
    assert wait_until(lambda: len(_workers(url)) == 2, timeout=30)
    pids = {w["pid"] for w in _workers(url)}
    assert _model_info_pids(url) == {str(pid) for pid in pids}
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    # The survivor (and any replacement worker) answers; the dead worker's series is gone.
    assert wait_until(lambda: str(victim) not in _model_info_pids(url), timeout=30)
    assert _model_info_pids(url)
    assert victim not in {w["pid"] for w in _workers(url)}


def test_workers_start_at_once_with_an_unreachable_registry(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "MODEL_URI": "models:/churn-classifier@production",
        # nothing listens there; MLflow alone would retry for minutes before giving up
        "MLFLOW_TRACKING_URI": f"http://someone:secret@127.0.0.1:{free_port()}",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'log.db'}",
        "LOG_LEVEL": "INFO",
        "ENVIRONMENT": "test",
    }
    log = tmp_path / "uvicorn.log"
    with api_server(env, log, workers=2, probe="/health") as url:

        def reason() -> str | None:
            answer = httpx.get(f"{url}/ready", timeout=10)
            assert answer.status_code == 503
            return answer.json().get("reason")

        assert wait_until(lambda: reason() == "model registry unreachable", timeout=60)
        assert httpx.head(f"{url}/health", timeout=10).status_code == 200
        for path in ("/ready", "/model"):
            assert "secret" not in httpx.get(f"{url}{path}", timeout=10).text
    text = log.read_text()
    assert "model registry unreachable" in text
    assert "secret" not in text
