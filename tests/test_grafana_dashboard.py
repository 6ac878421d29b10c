"""The Grafana dashboard and the Prometheus rules, checked against a real Prometheus.

Structure checks run on the JSON alone. The query checks start Prometheus with the repo's
own scrape config (targets moved to loopback) and rule files, a real Pushgateway holding a
drift result, and a small stand-in for the API's /metrics built with prometheus_client (the
library the API uses). Every dashboard query and every rule expression must then be accepted
by Prometheus and, since the stand-in emits every contract metric, return data: a typo in a
metric name, a label value or a function shows up here instead of as an empty panel.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    push_to_gateway,
)

from churn.datagen import generate_with_truth
from monitoring.drift.push import add_performance_metrics
from monitoring.performance.estimate import estimate_performance
from monitoring.performance.results import PerformanceReport
from monitoring.performance.segments import SegmentSpec, analyse_segments
from tests._tools import free_port, require_binary
from tests.metric_contract import API_HISTOGRAMS, CONTRACT_METRICS
from tests.prometheus_fixture import (
    MONITORING_DIR,
    has_series,
    instant_query,
    localized_config,
    start_prometheus,
    start_pushgateway,
    stop_process,
    wait_for,
    wait_for_series,
)

GRAFANA_DIR = MONITORING_DIR / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "churn.json"
DATASOURCES = GRAFANA_DIR / "datasources" / "datasource.yml"
PROVIDERS = GRAFANA_DIR / "dashboards" / "dashboards.yml"
RULE_PATHS = [MONITORING_DIR / "alerts.yml", *sorted((MONITORING_DIR / "rules").glob("*.yml"))]

HISTOGRAMS = API_HISTOGRAMS
PROMETHEUS_BUILTINS = {"up", "ALERTS", "ALERTS_FOR_STATE"}

REQUIRED_TITLES = {
    "Prediction throughput",
    "p95 latency (/predict)",
    "High-risk rate",
    "Errors",
    "Prediction probability distribution",
    "Per-feature drift",
    "Live AUC vs gate",
    "Model version",
    "Estimated vs realised AUC",
    "Per-segment calibration",
}
# The rollout row (#13): the roles side by side, the canary state and the evaluation.
ROLLOUT_ROW = "Champion vs challenger"
ROLLOUT_TITLES = {
    "Predictions by role",
    "Error ratio by role",
    "p95 model latency by role",
    "High-risk rate by role",
    "Canary share",
    "Rollout stage",
    "AUC difference, challenger minus champion",
    "Rollout decision",
    "Evaluation evidence",
    "Shadow scoring",
    "Rollbacks and refused challengers",
}

GRAFANA_INTERVAL_VARS = re.compile(r"\$\{?__(?:rate_interval|interval|range)\}?")
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "offset", "bool", "inf", "nan",
}  # fmt: skip


# --------------------------------------------------------------------------- helpers


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Panels including those nested in collapsed rows."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title/refId, expr with Grafana interval variables replaced by 5m)."""
    return [
        (f"{panel['title']}/{target['refId']}", GRAFANA_INTERVAL_VARS.sub("5m", target["expr"]))
        for panel in query_panels(load_dashboard())
        for target in panel["targets"]
    ]


def rule_expressions() -> list[tuple[str, str]]:
    """(rule name, expr) for every recording and alerting rule in the repo."""
    exprs = []
    for path in RULE_PATHS:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                exprs.append((rule.get("record") or rule["alert"], rule["expr"]))
    return exprs


def recording_names() -> set[str]:
    return {name for name, _ in rule_expressions() if ":" in name}


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression.

    A small lexer, not a parser: drop string literals, label matchers, range/subquery
    brackets and grouping label lists, then keep identifiers that are not keywords and not
    followed by "(" (function calls).
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        followed_by_call = text[match.end() :].lstrip().startswith("(")
        if not followed_by_call and match.group().lower() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def known_series_names() -> set[str]:
    histogram_series = {
        f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")
    }
    return (
        (CONTRACT_METRICS - HISTOGRAMS) | histogram_series | recording_names() | PROMETHEUS_BUILTINS
    )


# --------------------------------------------------------------------------- static checks


def test_dashboard_identity() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "churn-overview"  # links and alerts point at it
    assert dashboard["schemaVersion"] >= 36
    assert dashboard.get("id") is None, "a provisioned dashboard must not carry a database id"


def test_panel_ids_are_unique() -> None:
    ids = [panel["id"] for panel in all_panels(load_dashboard())]
    assert len(ids) == len(set(ids))


def test_required_panels_present() -> None:
    titles = {panel["title"] for panel in all_panels(load_dashboard())}
    assert REQUIRED_TITLES - titles == set()


def row_titles(dashboard: dict[str, Any], row: str) -> set[str]:
    """Titles of the panels laid out under a (non-collapsed) row, up to the next row."""
    panels = dashboard["panels"]
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == row)
    titles = set()
    for panel in panels[start + 1 :]:
        if panel["type"] == "row":
            break
        titles.add(panel["title"])
    return titles


def test_champion_vs_challenger_row_compares_the_roles() -> None:
    dashboard = load_dashboard()
    assert row_titles(dashboard, ROLLOUT_ROW) == ROLLOUT_TITLES
    by_title = {panel["title"]: panel for panel in all_panels(dashboard)}
    for title in ("Predictions by role", "Error ratio by role", "p95 model latency by role"):
        exprs = [target["expr"] for target in by_title[title]["targets"]]
        assert "by (role" in exprs[0], f"{title}: the first query must split by role"
        assert "shadow_" in exprs[1], f"{title}: shadow scoring shows the challenger in shadow"
    auc = " ".join(
        t["expr"] for t in by_title["AUC difference, challenger minus champion"]["targets"]
    )
    assert "rollout_auc_difference_lower" in auc


def test_panels_use_the_provisioned_datasource() -> None:
    datasources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(datasources) == 1
    source = datasources[0]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    for panel in query_panels(load_dashboard()):
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no queries"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]
            assert target["expr"].strip(), f"{panel['title']}: empty query"


def test_refids_are_unique_within_each_panel() -> None:
    for panel in query_panels(load_dashboard()):
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_panels_fit_the_grid_without_overlap() -> None:
    occupied: dict[tuple[int, int], str] = {}
    for panel in all_panels(load_dashboard()):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in occupied, f"{panel['title']} overlaps {occupied[(x, y)]}"
                occupied[(x, y)] = panel["title"]


def test_dashboard_provider_points_at_the_dashboard_directory() -> None:
    provider = yaml.safe_load(PROVIDERS.read_text())["providers"][0]
    assert provider["type"] == "file"
    assert Path(provider["options"]["path"]).name == DASHBOARD.parent.name


def test_queries_use_no_unknown_variables() -> None:
    for title, expr in dashboard_queries():
        assert "$" not in expr, f"{title}: unknown Grafana variable in {expr!r}"


@pytest.mark.parametrize(("title", "expr"), dashboard_queries(), ids=lambda v: str(v)[:60])
def test_dashboard_uses_only_contract_metrics(title: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{title}: no metric found in {expr!r}"
    unknown = names - known_series_names()
    assert unknown == set(), f"{title}: not in the metric contract or recording rules"


@pytest.mark.parametrize(("name", "expr"), rule_expressions(), ids=lambda v: str(v)[:60])
def test_rules_use_only_contract_metrics(name: str, expr: str) -> None:
    unknown = metric_names(expr) - known_series_names()
    assert unknown == set(), f"{name}: not in the metric contract or recording rules"


def test_metric_name_check_catches_typos() -> None:
    """The contract check can fail: a misspelt metric is reported, labels are not."""
    expr = 'sum by (outcome) (rate(predictions_totl{job="churn-api", route="/x"}[5m])) > 0.5'
    assert metric_names(expr) == {"predictions_totl"}
    assert "predictions_totl" not in known_series_names()
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(x_bucket[1d] offset 1h)))") == {
        "x_bucket"
    }


# --------------------------------------------------------------------------- live Prometheus


class FakeChurnApi:
    """Emits every API metric of the contract, with a little traffic added per scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
        self.predictions = Counter("predictions_total", "", ["outcome", "role"], registry=r)
        self.decisions = Counter("prediction_decisions_total", "", ["decision", "role"], registry=r)
        self.high_risk = Counter("high_risk_predictions_total", "", ["role"], registry=r)
        self.latency = Histogram(
            "prediction_latency_seconds", "", ["role"], buckets=buckets, registry=r
        )
        # A challenger in canary at 10 % (rollout_stage, rollout_canary_share per worker),
        # scored in shadow on the champion's rows too, one earlier rollback, one refusal.
        self.shadow = Counter("shadow_predictions_total", "", ["outcome"], registry=r)
        self.shadow_latency = Histogram("shadow_latency_seconds", "", buckets=buckets, registry=r)
        share = Gauge("rollout_canary_share", "", ["pid"], registry=r)
        share.labels("11").set(0.1)
        share.labels("12").set(0.1)
        stage = Gauge("rollout_stage", "", ["stage"], registry=r)
        for name in ("shadow", "canary", "promoted", "rejected", "rolled_back"):
            stage.labels(name).set(1 if name == "canary" else 0)
        self.rollbacks = Counter("rollout_rollbacks_total", "", ["reason"], registry=r)
        for reason in ("error_ratio", "latency", "high_risk"):
            self.rollbacks.labels(reason)
        self.rollbacks.labels("latency").inc()
        refused = Counter("challenger_refused_total", "", ["reason"], registry=r)
        refused.labels("schema_mismatch").inc()
        self.probability = Histogram(
            "prediction_probability", "", buckets=[i / 10 for i in range(1, 11)], registry=r
        )
        self.requests = Counter(
            "http_requests_total", "", ["method", "route", "status"], registry=r
        )
        self.duration = Histogram(
            "http_request_duration_seconds", "", ["method", "route", "status"], registry=r
        )
        labels = ["model_name", "model_version", "run_id", "backend"]
        Gauge("model_info", "", labels, registry=r).labels("churn", "3", "abc123", "onnx").set(1)
        self.dropped = Counter("prediction_log_dropped_total", "", ["reason"], registry=r)
        self.unknown = Counter("unknown_category_total", "", ["feature"], registry=r)
        self.reloads = Counter("model_reloads_total", "", ["result"], registry=r)
        self.reloads.labels("success").inc()
        self.reloads.labels("failure")
        self.lock = threading.Lock()

    def simulate_traffic(self) -> None:
        """Ten requests: seven predictions (the last two answered by the challenger), one 500,
        one 422, the champion's rows scored in shadow, a few data-quality events."""
        with self.lock:
            for i, probability in enumerate((0.05, 0.15, 0.3, 0.45, 0.6, 0.8, 0.95)):
                role = "challenger" if i >= 5 else "champion"
                self.predictions.labels("success", role).inc()
                decision = "churn" if probability >= 0.5 else "no_churn"
                self.decisions.labels(decision, role).inc()
                if probability >= 0.8:
                    self.high_risk.labels(role).inc()
                self.probability.observe(probability)
                self.latency.labels(role).observe(0.004 if role == "champion" else 0.006)
                self.requests.labels("POST", "/predict", "200").inc()
                self.duration.labels("POST", "/predict", "200").observe(0.02)
                if role == "champion":
                    self.shadow.labels("success").inc()
                    self.shadow_latency.observe(0.005)
            self.shadow.labels("error")
            self.shadow.labels("dropped").inc()
            # the one 500 below: the model failed
            self.predictions.labels("error", "champion").inc()
            for status in ("500", "422"):
                self.requests.labels("POST", "/predict", status).inc()
                self.duration.labels("POST", "/predict", status).observe(0.01)
            self.dropped.labels("queue_full").inc()
            self.unknown.labels("contract").inc()

    def exposition(self) -> bytes:
        self.simulate_traffic()
        return generate_latest(self.registry)


def serve_metrics(api: FakeChurnApi) -> ThreadingHTTPServer:
    """Serve `api` on a loopback port from a daemon thread; the caller shuts it down."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = api.exposition()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def push_drift_result(pushgateway: str) -> None:
    """Push what the drift job pushes: 'tenure' drifted, 'monthly_charges' did not."""
    registry = CollectorRegistry()
    p_value = Gauge("drift_feature_p_value", "", ["feature"], registry=registry)
    effect = Gauge("drift_feature_effect_size", "", ["feature"], registry=registry)
    drifted = Gauge("drift_feature_drifted", "", ["feature"], registry=registry)
    for feature, p, e, d in (("tenure", 0.001, 0.31, 1), ("monthly_charges", 0.4, 0.02, 0)):
        p_value.labels(feature).set(p)
        effect.labels(feature).set(e)
        drifted.labels(feature).set(d)
    values = {
        "drift_detected": 1,
        "drift_prediction_drifted": 0,
        "drift_prediction_p_value": 0.3,
        "drift_last_run_timestamp_seconds": time.time(),
        "live_auc": 0.91,
        "live_precision": 0.8,
        "live_recall": 0.7,
        "live_labelled_samples": 500,
    }
    for name, value in values.items():
        Gauge(name, "", registry=registry).set(value)
    add_performance_metrics(performance_report(), registry)
    push_to_gateway(pushgateway, job="drift_monitor", registry=registry)


def push_rollout_evaluation(pushgateway: str) -> None:
    """Push what the rollout evaluation pushes: a challenger still undecided."""
    registry = CollectorRegistry()
    decision = Gauge("rollout_decision", "", ["decision"], registry=registry)
    for name in ("promote", "reject", "undecided"):
        decision.labels(name).set(1 if name == "undecided" else 0)
    values = {
        "rollout_auc_difference": -0.002,
        "rollout_auc_difference_lower": -0.011,
        "rollout_auc_difference_upper": 0.007,
        "rollout_labelled_pairs": 320,
        "rollout_tier_agreement": 0.93,
        "rollout_evaluation_timestamp_seconds": time.time(),
    }
    for name, value in values.items():
        Gauge(name, "", registry=registry).set(value)
    push_to_gateway(pushgateway, job="rollout_evaluation", registry=registry)


def performance_report() -> PerformanceReport:
    """What the drift job's estimated-performance section pushes, from the real emitter, for a
    labelled window of generated customers scored with their true probabilities."""
    frame, truth = generate_with_truth(2000, seed=3)
    labels = frame["churned"].to_numpy(dtype=float)
    specs = [SegmentSpec("internet_service", ("DSL", "Fiber optic", "No"))]
    return PerformanceReport(
        estimate_performance(truth, truth, 0.5, labels=labels),
        analyse_segments(frame, specs, truth, truth, labels),
        "identity",
        gate_auc=0.88,
    )


@dataclass
class LivePrometheus:
    url: str


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePrometheus]:
    """Prometheus with the repo's config and rules, scraping the fake API and a Pushgateway.

    Setup takes about 8 seconds (hence the tests using it are marked slow): Prometheus 2.x
    hands new targets to the scrape manager on a fixed 5-second tick, then rates need two
    scrapes and recording rules one evaluation.
    """
    require_binary("prometheus")
    require_binary("prometheus-pushgateway")
    tmp = tmp_path_factory.mktemp("prometheus")
    api_server = serve_metrics(FakeChurnApi())
    pushgateway_port = free_port()
    pushgateway = start_pushgateway(pushgateway_port, tmp)
    prom = None
    try:
        push_drift_result(f"127.0.0.1:{pushgateway_port}")
        push_rollout_evaluation(f"127.0.0.1:{pushgateway_port}")
        port = free_port()
        targets = {
            "churn-api": f"127.0.0.1:{api_server.server_address[1]}",
            "pushgateway": f"127.0.0.1:{pushgateway_port}",
        }
        config = localized_config(tmp / "prometheus.yml", port, targets)
        prom = start_prometheus(config, port, tmp)
        url = f"http://127.0.0.1:{port}"
        # Rates need two scrapes; recording rules one evaluation after that.
        for name in sorted(recording_names()):
            wait_for_series(url, name)
        wait_for_series(url, 'drift_detected{job="drift_monitor"}')
        wait_for_series(url, 'rollout_decision{job="rollout_evaluation"}')
        yield LivePrometheus(url)
    finally:
        if prom is not None:
            stop_process(prom)
        stop_process(pushgateway)
        api_server.shutdown()
        api_server.server_close()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(("title", "expr"), dashboard_queries(), ids=lambda v: str(v)[:60])
def test_dashboard_query_runs_and_returns_data(
    prometheus: LivePrometheus, title: str, expr: str
) -> None:
    body = instant_query(prometheus.url, expr)
    assert body["status"] == "success", f"{title}: {body.get('error')}"
    assert body["data"]["result"], f"{title}: {expr!r} returned no series"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(("name", "expr"), rule_expressions(), ids=lambda v: str(v)[:60])
def test_rule_expression_is_accepted(prometheus: LivePrometheus, name: str, expr: str) -> None:
    body = instant_query(prometheus.url, expr)
    assert body["status"] == "success", f"{name}: {body.get('error')}"


@pytest.mark.integration
@pytest.mark.slow
def test_loaded_rules_evaluate_without_errors(prometheus: LivePrometheus) -> None:
    def rules() -> list[dict[str, Any]]:
        groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    wait_for(lambda: all(r["health"] != "unknown" for r in rules()), "every rule evaluated")
    loaded = rules()
    assert {r["name"] for r in loaded} == {name for name, _ in rule_expressions()}
    errors = {r["name"]: r.get("lastError") for r in loaded if r["health"] != "ok"}
    assert errors == {}


@pytest.mark.integration
@pytest.mark.slow
def test_pushed_drift_result_reaches_the_alerts(prometheus: LivePrometheus) -> None:
    """honor_labels keeps job="drift_monitor", so the drift alerts see the pushed series."""
    pending = 'ALERTS{alertname="FeatureDriftDetected", job="drift_monitor", feature="tenure"}'
    wait_for_series(prometheus.url, pending)
    assert not has_series(prometheus.url, 'ALERTS{feature="monthly_charges"}')
    assert not has_series(prometheus.url, 'ALERTS{alertname="ChurnApiDown"}')


@pytest.mark.integration
@pytest.mark.slow
def test_prometheus_rejects_a_broken_query(prometheus: LivePrometheus) -> None:
    """The query checks can fail: a syntax error and an unknown function are errors."""
    assert instant_query(prometheus.url, "sum(rate(predictions_total[5m])")["status"] == "error"
    assert instant_query(prometheus.url, "rates(predictions_total[5m])")["status"] == "error"
