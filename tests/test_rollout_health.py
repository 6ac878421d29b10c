"""Each role's p95 latency and error ratio as a real Prometheus computes them.

The scrape target is a stand-in exposing the API's role-labelled metrics (the names fixed for
issue 13: predictions_total{outcome,role}, prediction_latency_seconds{role}, and the shadow
metrics), scraped with the repository's own scrape config; the queries, the histogram
quantile and the fail-closed reading are what is under test.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from churn.config import RolloutConfig
from monitoring.rollout.decision import decide
from monitoring.rollout.health import read_health
from monitoring.rollout.results import EvaluationError
from tests._tools import free_port
from tests.prometheus_fixture import localized_config, running_prometheus, wait_for
from tests.test_rollout_stats import difference, evidence

pytestmark = [pytest.mark.integration]

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Stub:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "predictions", "", ["outcome", "role"], registry=self.registry
        )  # exposed as predictions_total
        self.latency = Histogram(
            "prediction_latency_seconds", "", ["role"], buckets=BUCKETS, registry=self.registry
        )
        self.shadow = Counter("shadow_predictions", "", ["outcome"], registry=self.registry)
        self.shadow_latency = Histogram(
            "shadow_latency_seconds", "", buckets=BUCKETS, registry=self.registry
        )
        for role in ("champion", "challenger"):
            for outcome in ("success", "error"):
                self.requests.labels(outcome, role)
            self.latency.labels(role)
        for outcome in ("success", "error", "dropped"):
            self.shadow.labels(outcome)

    def traffic(self) -> None:
        """Champion: 1,000 answers, 1 % errors, ~8 ms; challenger: 100 answers, 5 % errors,
        ~400 ms (a canary that breaches both bounds); shadow scoring ~40 ms, no errors."""
        self.requests.labels("success", "champion").inc(990)
        self.requests.labels("error", "champion").inc(10)
        self.requests.labels("success", "challenger").inc(95)
        self.requests.labels("error", "challenger").inc(5)
        for _ in range(1000):
            self.latency.labels("champion").observe(0.008)
        for _ in range(100):
            self.latency.labels("challenger").observe(0.4)
        self.shadow.labels("success").inc(500)
        for _ in range(500):
            self.shadow_latency.observe(0.04)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Stub]]:
    tmp = tmp_path_factory.mktemp("rollout-prometheus")
    stub = Stub()
    stub_port, prom_port = free_port(), free_port()
    server, thread = start_http_server(stub_port, addr="127.0.0.1", registry=stub.registry)
    config = localized_config(
        tmp / "prometheus.yml", prom_port, {"churn-api": f"127.0.0.1:{stub_port}"}
    )
    try:
        with running_prometheus(config, prom_port, tmp) as url:
            query = f"{url}/api/v1/query"

            def scraped(expr: str) -> bool:
                body = httpx.get(query, params={"query": expr}, timeout=5).json()
                return bool(body["data"]["result"])

            wait_for(lambda: scraped('predictions_total{role="challenger"}'), "a first scrape")
            stub.traffic()
            wait_for(
                lambda: scraped('predictions_total{role="challenger",outcome="error"} > 0'),
                "the traffic to be scraped",
            )
            yield url, stub
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_canary_health_per_role(prometheus: tuple[str, Stub]) -> None:
    url, _ = prometheus
    health = {h.role: h for h in read_health(url, "canary", timedelta(minutes=5))}
    champion, challenger = health["champion"], health["challenger"]
    assert champion.error_ratio == pytest.approx(0.01, rel=0.05)
    assert challenger.error_ratio == pytest.approx(0.05, rel=0.05)
    assert champion.p95_latency_ms is not None and 5 <= champion.p95_latency_ms <= 10
    assert challenger.p95_latency_ms is not None and 250 <= challenger.p95_latency_ms <= 500
    rule = RolloutConfig()
    verdict = decide(
        evidence(difference(-0.004, 0.006), health=tuple(health.values())),
        rule,
        rule.guardrails.model_dump(),
    )
    assert verdict.verdict == "reject"
    assert any("error ratio" in r for r in verdict.reasons)
    assert any("p95 latency" in r for r in verdict.reasons)


def test_shadow_health_reads_the_shadow_metrics(prometheus: tuple[str, Stub]) -> None:
    url, _ = prometheus
    health = {h.role: h for h in read_health(url, "shadow", timedelta(minutes=5))}
    challenger = health["challenger"]
    assert challenger.error_ratio == 0.0
    assert challenger.p95_latency_ms is not None and 25 <= challenger.p95_latency_ms <= 50


def test_a_prometheus_error_is_an_error(prometheus: tuple[str, Stub], tmp_path: Path) -> None:
    url, _ = prometheus
    with pytest.raises(EvaluationError, match="unreachable"):
        read_health(f"http://127.0.0.1:{free_port()}", "canary", timedelta(minutes=5))
    with pytest.raises(EvaluationError, match="HTTP 404"):
        read_health(f"{url}/nothing-here", "canary", timedelta(minutes=5))
