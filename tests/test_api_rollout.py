"""Progressive delivery, API side, for real: a `mlflow server`, three trained versions and
`uvicorn --workers 2` following ``@production``, ``@challenger`` and the rollout record.

v1 is the champion; v2 (same features, another sample) the challenger; v3 drops a feature,
so no worker may use it. The tests run in order on one server: shadow (both predictions
logged, paired), a refused schema, shadow -> canary under traffic (every worker within
MODEL_WATCH_INTERVAL, zero failed requests; 10 % +- 3 points, sticky), and a guardrail breach
(share 0 in every worker, the record says rolled_back with the reason).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from churn.config import load_config
from churn.datagen import generate_customers
from churn.registry import client as registry_client
from churn.rollout import (
    CANARY,
    CHALLENGER,
    ROLLED_BACK,
    RolloutRecord,
    read_record,
    routing_bucket,
    write_record,
)
from churn.training import train
from tests.api_support import CUSTOMER, wait_until
from tests.conftest import write_config
from tests.mlflow_server import mlflow_server
from tests.processes import ApiProcess, api_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WATCH_INTERVAL = 1.0
GUARDRAILS = {
    "min_requests": 200,
    "window_seconds": 300,
    "max_error_ratio": 0.02,
    "max_p95_latency_ms": 250,
    "max_high_risk_rate_delta": 0.15,
}


@dataclass
class Registry:
    url: str
    name: str
    champion: str  # v1
    challenger: str  # v2: same schema
    other_schema: str  # v3: a feature fewer

    def client(self) -> Any:
        return registry_client(self.url)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    tmp = tmp_path_factory.mktemp("rollout")
    previous = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        with mlflow_server(f"sqlite:///{tmp / 'backend.db'}", tmp) as url:
            versions = []
            features = {
                "numeric": ["tenure", "monthly_charges", "num_products"],
                "rules": {
                    "tenure": {"min": 0},
                    "monthly_charges": {"min": 0},
                    "num_products": {"min": 1, "max": 10, "integer": True},
                    "contract_type": {"allowed": ["Month-to-month", "One year", "Two year"]},
                },
            }
            for i, overrides in enumerate(({}, {}, {"features": features})):
                work = tmp / f"v{i + 1}"
                work.mkdir()
                generate_customers(3000, seed=20 + i).to_csv(work / "churn_train.csv", index=False)
                path = write_config(work, mlflow={"tracking_uri": url}, **overrides)
                result = train(load_config(path), config_path=path)
                versions.append(result.model_version)
            name = load_config(path).mlflow.model_name
            registry_client(url).set_registered_model_alias(name, "production", versions[0])
            yield Registry(url, name, *versions)
    finally:
        if previous is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous


@dataclass
class Api:
    process: ApiProcess
    database: Path

    @property
    def url(self) -> str:
        return self.process.url

    def log(self) -> str:
        return self.process.log()


@pytest.fixture(scope="module")
def api(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("rollout-api")
    metrics_dir = tmp / "prometheus"
    metrics_dir.mkdir()
    database = tmp / "log.db"
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "MODEL_URI": f"models:/{registry.name}@production",
        "MLFLOW_TRACKING_URI": registry.url,
        "MODEL_WATCH_INTERVAL": str(WATCH_INTERVAL),
        "MODEL_SYNC_INTERVAL": "0.2",
        "DATABASE_URL": f"sqlite:///{database}",
        "PREDICTION_LOG_FLUSH_INTERVAL": "0.1",
        "LOG_LEVEL": "INFO",
        "ENVIRONMENT": "test",
    }
    with api_process(env, tmp / "uvicorn.log", workers=2) as process:
        yield Api(process, database)


# ---------------------------------------------------------------------------- helpers


def per_worker(url: str, name: str, **labels: str) -> dict[str, float]:
    """A live gauge's value per worker pid (liveall gauges carry a pid label)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        sample.labels["pid"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    }


def counter(url: str, name: str, **labels: str) -> float:
    from tests.api_support import metric_value

    return metric_value(httpx.get(f"{url}/metrics", timeout=10).text, name, **labels)


def every_worker(api: Api, name: str, value: float, **labels: str) -> bool:
    values = per_worker(api.url, name, **labels)
    pids = {str(pid) for pid in api.process.worker_pids()}
    return len(pids) == 2 and all(values.get(pid) == value for pid in pids)


def start_rollout(
    registry: Registry, version: str, share: float | None = None, **bounds: float
) -> RolloutRecord:
    """@challenger -> version with a new record (shadow, or canary at `share`)."""
    mlflow = registry.client()
    record = RolloutRecord.start(
        version, registry.champion, "test", by="test", guardrails={**GUARDRAILS, **bounds}
    )
    if share is not None:
        record = record.moved(CANARY, "test canary", by="test", share=share)
    write_record(mlflow, registry.name, record)
    mlflow.set_registered_model_alias(registry.name, CHALLENGER, version)
    return record


def post(url: str, path: str, body: Any, **headers: str) -> httpx.Response:
    # A new connection each time, so the kernel spreads requests over both workers.
    with httpx.Client(base_url=url, timeout=20) as client:
        return client.post(path, json=body, headers=headers)


class Traffic:
    """Requests sent without pause from a thread; every answer's status kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: list[int] = []
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                answer = post(self.url, "/predict", {**CUSTOMER, "customer_id": f"t-{i}"})
                self.statuses.append(answer.status_code)
                if answer.status_code == 200:
                    self.versions.append(answer.json()["model_version"])
            except httpx.HTTPError:
                self.statuses.append(0)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


# ---------------------------------------------------------------------------- the story


def test_shadow_logs_both_predictions_paired(api: Api, registry: Registry) -> None:
    start_rollout(registry, registry.challenger)
    assert wait_until(lambda: every_worker(api, "rollout_stage", 1, stage="shadow"), timeout=60)
    sent = 40
    ids = []
    for i in range(sent):
        answer = post(api.url, "/predict", {**CUSTOMER, "tenure": i})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        # the champion answers every request in shadow
        assert body["model_version"] == registry.champion
        assert answer.headers["x-model-version"] == registry.champion
        assert answer.headers["x-model-role"] == "champion"
        ids.append(body["prediction_id"])
    batch = post(api.url, "/predict/batch", {"customers": [CUSTOMER] * 5})
    assert batch.status_code == 200
    assert {p["model_version"] for p in batch.json()["predictions"]} == {registry.champion}

    engine = sa.create_engine(f"sqlite:///{api.database}")

    def paired() -> list[Any]:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.text(
                        "SELECT s.batch_id, s.model_version, s.served_version, s.rows, "
                        "s.probabilities, b.model_version, b.rows FROM shadow_predictions s "
                        "JOIN prediction_batches b ON b.batch_id = s.batch_id"
                    )
                )
            )

    assert wait_until(lambda: len(paired()) == sent + 1, timeout=30), len(paired())
    rows = paired()
    assert {r[1] for r in rows} == {registry.challenger}  # scored by the challenger
    assert {r[2] for r in rows} == {registry.champion}  # paired with the champion's answer
    assert {r[5] for r in rows} == {registry.champion}
    assert all(r[3] == r[6] for r in rows)  # row i pairs with row i of the served batch
    assert {r[0] for r in rows} >= {i[:28] for i in ids}  # the same prediction ids
    assert counter(api.url, "shadow_predictions_total", outcome="success") == sent + 5
    assert counter(api.url, "shadow_predictions_total", outcome="dropped") == 0
    assert counter(api.url, "predictions_total", outcome="success", role="challenger") == 0


def test_a_challenger_with_another_schema_is_refused(api: Api, registry: Registry) -> None:
    start_rollout(registry, registry.other_schema)
    assert wait_until(
        lambda: counter(api.url, "challenger_refused_total", reason="schema_mismatch") >= 2,
        timeout=60,
    )
    assert "CHALLENGER REFUSED" in api.log()
    assert f"version {registry.other_schema} (schema_mismatch" in api.log()
    # the champion keeps serving, and nothing runs in shadow
    shadowed = counter(api.url, "shadow_predictions_total", outcome="success")
    for _ in range(10):
        answer = post(api.url, "/predict", CUSTOMER)
        assert answer.status_code == 200
        assert answer.json()["model_version"] == registry.champion
    assert every_worker(api, "rollout_stage", 0, stage="shadow")
    assert counter(api.url, "shadow_predictions_total", outcome="success") == shadowed
    model = httpx.get(f"{api.url}/model", timeout=10).json()
    assert model["rollout"]["refused"] == {
        "version": registry.other_schema,
        "reason": "schema_mismatch",
    }


def test_shadow_to_canary_under_traffic(api: Api, registry: Registry) -> None:
    record = start_rollout(registry, registry.challenger)
    assert wait_until(lambda: every_worker(api, "rollout_stage", 1, stage="shadow"), timeout=60)
    mlflow = registry.client()
    with Traffic(api.url) as traffic:
        time.sleep(0.5)  # traffic before the change too
        changed = time.monotonic()
        write_record(mlflow, registry.name, record.moved(CANARY, "test", by="test", share=0.1))
        assert wait_until(
            lambda: every_worker(api, "rollout_canary_share", 0.1), timeout=30, step=0.05
        )
        took = time.monotonic() - changed
        time.sleep(1.0)
    # every worker within MODEL_WATCH_INTERVAL (plus the time to read the metrics)
    assert took <= WATCH_INTERVAL + 0.5, took
    assert traffic.statuses and set(traffic.statuses) == {200}, traffic.statuses
    assert every_worker(api, "rollout_stage", 1, stage="canary")

    # 10 % +- 3 points of 1,000 customers, per row of a batch
    customers = [{**CUSTOMER, "customer_id": f"customer-{i}"} for i in range(1000)]
    answers = [post(api.url, "/predict/batch", {"customers": customers}) for _ in range(6)]
    assert all(a.status_code == 200 for a in answers)
    routes = [[p["model_version"] for p in a.json()["predictions"]] for a in answers]
    share = routes[0].count(registry.challenger) / len(customers)
    assert 0.07 <= share <= 0.13, share
    # sticky: the same customers meet the same model, whichever worker answers
    assert all(r == routes[0] for r in routes)
    expected = [routing_bucket(f"customer-{i}") < 0.1 for i in range(1000)]
    assert [v == registry.challenger for v in routes[0]] == expected
    assert answers[0].headers["x-model-role"] == "mixed"
    # an integer customer_id is the same customer as its text
    one = post(api.url, "/predict", {**CUSTOMER, "customer_id": 7})
    assert (
        one.json()["model_version"]
        == post(api.url, "/predict", {**CUSTOMER, "customer_id": "7"}).json()["model_version"]
    )

    # X-Routing-Key: one key inside the share, one outside
    inside = next(k for k in (f"key-{i}" for i in range(1000)) if routing_bucket(k) < 0.1)
    outside = next(k for k in (f"key-{i}" for i in range(1000)) if routing_bucket(k) >= 0.1)
    for _ in range(4):
        answer = post(api.url, "/predict", CUSTOMER, **{"X-Routing-Key": inside})
        assert answer.headers["x-model-role"] == "challenger"
        assert answer.json()["model_version"] == registry.challenger
        assert answer.headers["x-model-version"] == registry.challenger
        answer = post(api.url, "/predict", CUSTOMER, **{"X-Routing-Key": outside})
        assert answer.headers["x-model-role"] == "champion"
        assert answer.json()["model_version"] == registry.champion
    # a wrong type for the routing key: 422 naming the field
    for wrong in (1.5, True, None, "", ["a"]):
        answer = post(api.url, "/predict", {**CUSTOMER, "customer_id": wrong})
        assert answer.status_code == 422, wrong
        assert answer.json()["detail"][0]["loc"] == ["body", "customer_id"]
    assert counter(api.url, "predictions_total", outcome="success", role="challenger") > 0


def test_a_guardrail_breach_rolls_the_canary_back_everywhere(api: Api, registry: Registry) -> None:
    # A real cause: a latency bound no model can meet (1 microsecond), judged after 30 answers.
    start_rollout(
        registry, registry.challenger, share=0.5, min_requests=30, max_p95_latency_ms=0.001
    )
    assert wait_until(lambda: every_worker(api, "rollout_canary_share", 0.5), timeout=60)
    with Traffic(api.url) as traffic:
        assert wait_until(
            lambda: every_worker(api, "rollout_stage", 1, stage="rolled_back"), timeout=60
        )
        assert every_worker(api, "rollout_canary_share", 0)
        time.sleep(1.0)
    assert set(traffic.statuses) == {200}
    assert counter(api.url, "rollout_rollbacks_total", reason="latency") >= 1

    def recorded() -> RolloutRecord | None:
        return read_record(registry.client(), registry.name, registry.challenger)

    assert wait_until(lambda: (r := recorded()) is not None and r.stage == ROLLED_BACK, 30)
    record = recorded()
    assert record is not None
    assert record.reason.startswith("guardrail latency: p95 latency")
    assert record.history[-1].by.startswith("api guardrail")
    assert "CANARY ROLLED BACK" in api.log()
    # traffic is back on the champion
    for i in range(20):
        answer = post(api.url, "/predict", {**CUSTOMER, "customer_id": i})
        assert answer.json()["model_version"] == registry.champion
