"""The compose stack, natively on loopback: every service real, wired as docker-compose.yml.

postgres (two databases: MLflow's backend and the prediction log) -> `mlflow server` ->
trainer (`python -m churn.datagen && python train.py && python promote_model.py`) -> API
(`uvicorn --workers 2`, multiprocess metrics, MODEL_URI=models:/...@production) ->
Prometheus (the repository's prometheus.yml and rule files, targets moved to loopback) and
a Pushgateway -> the drift job (`python -m monitoring.drift_detector ... --pushgateway`).

The tests show a prediction reaching a Prometheus query (summed over both workers) and the
prediction log, and a drift metric reaching an alert rule.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._tools import free_port, require_binary
from tests.conftest import ROOT, write_config
from tests.mlflow_server import mlflow_server, postgres_database
from tests.processes import api_server
from tests.prometheus_fixture import (
    instant_query,
    localized_config,
    start_prometheus,
    start_pushgateway,
    stop_process,
    wait_for,
    wait_for_series,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL_NAME = "churn-classifier"
# Generous: other test runs may share these two cores.
SERVICE_TIMEOUT_S = 180.0
METRIC_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Stack:
    api: str
    prometheus: str
    pushgateway: str
    tracking_uri: str
    log_url: str
    workdir: Path


def run_step(argv: list[str], env: dict[str, str], what: str) -> str:
    """Run one batch step to completion; fail the test with its output if it fails."""
    result = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SERVICE_TIMEOUT_S
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{what} exited {result.returncode}:\n{output[-4000:]}"
    return output


def train_and_promote(workdir: Path, tracking_uri: str) -> None:
    """The compose trainer service: generate data, train and register, gate and promote."""
    config_path = write_config(workdir, mlflow={"tracking_uri": tracking_uri})
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    data = str(workdir / "churn_train.csv")
    py = sys.executable
    run_step([py, "-m", "churn.datagen", "--rows", "3000", "--out", data], env, "datagen")
    run_step([py, "train.py", "--config", str(config_path)], env, "train.py")
    out = run_step([py, "promote_model.py", "--config", str(config_path)], env, "promote_model.py")
    assert f"promoted {MODEL_NAME} v1 to @production" in out, out


@contextlib.contextmanager
def running_api(workdir: Path, tracking_uri: str, log_url: str) -> Iterator[str]:
    """The compose api service: 2 workers following @production, logging to Postgres."""
    metrics_dir = workdir / "prometheus-multiproc"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "MODEL_URI": f"models:/{MODEL_NAME}@production",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MODEL_WATCH_INTERVAL": "60",
        "MODEL_REQUIRED": "true",
        "DATABASE_URL": log_url,
        "PREDICTION_LOG_FLUSH_INTERVAL": "0.1",
        "LOG_LEVEL": "WARNING",
        "ENVIRONMENT": "test",
    }
    with api_server(env, workdir / "uvicorn.log", workers=2, timeout=SERVICE_TIMEOUT_S) as url:
        # /ready answered by one worker: a registry model loads in the background after
        # start-up, so the other may still be loading (and answer 503); wait for both
        wait_for(lambda: every_worker_serving(url, 2), "both workers serving", SERVICE_TIMEOUT_S)
        yield url


def every_worker_serving(api: str, workers: int) -> bool:
    """GET /model (from whichever worker answers) lists `workers` live workers, all serving."""
    answer = httpx.get(f"{api}/model", timeout=10)
    if answer.status_code != 200:  # the worker asked has no model yet
        return False
    records = answer.json()["workers"]
    return len(records) == workers and all(r["status"] == "serving" for r in records)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_binary("prometheus")
    require_binary("prometheus-pushgateway")
    workdir = tmp_path_factory.mktemp("stack")
    with contextlib.ExitStack() as services:
        mlflow_db = services.enter_context(postgres_database("churn_stack_mlflow"))
        log_url = services.enter_context(postgres_database("churn_stack_log"))
        tracking_uri = services.enter_context(
            mlflow_server(mlflow_db, workdir, timeout=SERVICE_TIMEOUT_S)
        )
        train_and_promote(workdir, tracking_uri)
        api = services.enter_context(running_api(workdir, tracking_uri, log_url))

        gateway_port = free_port()
        gateway = start_pushgateway(gateway_port, workdir)
        services.callback(stop_process, gateway)
        prometheus_port = free_port()
        config = localized_config(
            workdir / "prometheus" / "prometheus.yml",
            prometheus_port,
            {
                "churn-api": api.removeprefix("http://"),
                "pushgateway": f"127.0.0.1:{gateway_port}",
            },
        )
        prometheus = start_prometheus(config, prometheus_port, workdir / "prometheus")
        services.callback(stop_process, prometheus)
        yield Stack(
            api=api,
            prometheus=f"http://127.0.0.1:{prometheus_port}",
            pushgateway=f"127.0.0.1:{gateway_port}",
            tracking_uri=tracking_uri,
            log_url=log_url,
            workdir=workdir,
        )


# --------------------------------------------------------------------------- helpers


def scalar(base_url: str, expr: str) -> float | None:
    """The value of a one-series query, None while it has no series."""
    body = instant_query(base_url, expr)
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def served_predictions(api: str) -> float:
    """predictions_total summed over outcomes, straight from the API's /metrics."""
    from tests.api_support import metric_value

    return metric_value(httpx.get(f"{api}/metrics", timeout=10).text, "predictions_total")


def logged_rows(log_url: str) -> int:
    from churn.prediction_log import read_predictions

    return len(read_predictions(log_url))


def customers(scenario: str, n_rows: int, seed: int) -> list[dict[str, Any]]:
    """Generated customers as /predict bodies (rows with gaps left out: the API refuses NaN)."""
    from churn.datagen import generate_drifted

    frame = generate_drifted(scenario, n_rows, seed=seed).dropna().drop(columns=["churned"])
    frame["num_products"] = frame["num_products"].astype(int)
    return list(frame.to_dict(orient="records"))


def alert_states(base_url: str, name: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{base_url}/api/v1/alerts", timeout=10).json()
    return [a for a in body["data"]["alerts"] if a["labels"].get("alertname") == name]


# --------------------------------------------------------------------------- tests


def production_run_id(tracking_uri: str) -> str:
    from churn.registry import client

    return str(client(tracking_uri).get_model_version_by_alias(MODEL_NAME, "production").run_id)


def test_predictions_reach_prometheus_and_the_log(stack: Stack) -> None:
    # The API under test serves the trainer's production model (and is not some other
    # process that happens to answer on the port).
    answer = httpx.get(f"{stack.api}/model", timeout=10)
    assert answer.status_code == 200, answer.text
    served = answer.json()
    assert served["run_id"] == production_run_id(stack.tracking_uri)
    wait_for_series(stack.prometheus, 'up{job="churn-api"} == 1', METRIC_TIMEOUT_S)
    wait_for_series(stack.prometheus, 'up{job="pushgateway"} == 1', METRIC_TIMEOUT_S)
    before = served_predictions(stack.api)
    rows_before = logged_rows(stack.log_url)
    n = 40
    for body in customers("none", 2 * n, seed=3)[:n]:
        # A new connection per request, so the kernel spreads them over both workers.
        with httpx.Client(base_url=stack.api, timeout=30) as client:
            answer = client.post("/predict", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_version"] == "1"

    expected = before + n
    query = 'sum(predictions_total{job="churn-api"})'
    wait_for(
        lambda: scalar(stack.prometheus, query) == expected,
        f"{query} == {expected}",
        METRIC_TIMEOUT_S,
    )
    assert scalar(stack.prometheus, query) == expected
    # The recording rules the alerts and the dashboard read are produced from the scrapes.
    for record in ("churn:predictions:rate5m", "churn:http_requests:rate5m"):
        wait_for_series(stack.prometheus, record, METRIC_TIMEOUT_S)
    assert (scalar(stack.prometheus, 'sum(churn:predictions:rate5m{job="churn-api"})') or 0) > 0
    assert scalar(stack.prometheus, 'up{job="churn-api"}') == 1
    wait_for(
        lambda: logged_rows(stack.log_url) == rows_before + n,
        f"{n} new rows in the Postgres prediction log",
        METRIC_TIMEOUT_S,
    )


def test_drift_reaches_the_alert_rule(stack: Stack) -> None:
    from churn.registry import download_bundle

    rows_before = logged_rows(stack.log_url)
    drifted = customers("month_to_month_shift", 400, seed=21)
    with httpx.Client(base_url=stack.api, timeout=60) as client:
        for start in range(0, len(drifted), 100):
            chunk = drifted[start : start + 100]
            answer = client.post("/predict/batch", json={"customers": chunk})
            assert answer.status_code == 200, answer.text
    wait_for(
        lambda: logged_rows(stack.log_url) == rows_before + len(drifted),
        "the drifted traffic in the prediction log",
        METRIC_TIMEOUT_S,
    )
    # The reference is the production bundle's own metadata, as in the drift-check workflow.
    bundle = download_bundle(
        stack.tracking_uri, f"models:/{MODEL_NAME}@production", stack.workdir / "reference"
    )
    drift = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitoring.drift_detector",
            "--since",
            "1h",
            "--database-url",
            stack.log_url,
            "--reference",
            str(bundle.directory / "metadata.json"),
            "--pushgateway",
            stack.pushgateway,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SERVICE_TIMEOUT_S,
    )
    assert drift.returncode == 1, drift.stdout + drift.stderr  # 1: drift found
    assert "contract_type" in drift.stdout

    flagged = 'drift_feature_drifted{job="drift_monitor", feature="contract_type"} == 1'
    wait_for_series(stack.prometheus, flagged, METRIC_TIMEOUT_S)
    # `for: 5m` keeps the alert pending in a test's lifetime; pending with the rule's labels
    # shows the pushed metric satisfies the rule's expression.
    wait_for(
        lambda: any(
            a["labels"].get("feature") == "contract_type"
            for a in alert_states(stack.prometheus, "FeatureDriftDetected")
        ),
        "FeatureDriftDetected for contract_type",
        METRIC_TIMEOUT_S,
    )
    alert = next(
        a
        for a in alert_states(stack.prometheus, "FeatureDriftDetected")
        if a["labels"]["feature"] == "contract_type"
    )
    assert alert["state"] in {"pending", "firing"}
    assert alert["labels"]["severity"] == "warning"
    assert alert["labels"]["job"] == "drift_monitor"
    assert float(alert["value"]) < 0.05  # the alert's value is the corrected p-value
