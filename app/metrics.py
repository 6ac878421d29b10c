"""Prometheus metrics of the API, correct with several uvicorn workers.

With PROMETHEUS_MULTIPROC_DIR set (the container sets it), prometheus_client keeps each
worker's values in files there and /metrics sums them, so counts add up whichever worker
answered. Metrics are created per app on their own registry (never the global one), so tests
can build many apps in one process.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from app.loopflush import defer
from app.workers import pid_alive

# The *_created series double the exposition size and no dashboard reads them.
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PROBABILITY_BUCKETS = tuple(i / 10 for i in range(1, 11))

# Which model answered (progressive delivery, churn/rollout.py): the champion (@production)
# or the challenger (its canary share).
CHAMPION_ROLE, CHALLENGER_ROLE = "champion", "challenger"
ROLES = (CHAMPION_ROLE, CHALLENGER_ROLE)
ROLLOUT_STAGES = ("shadow", "canary", "promoted", "rejected", "rolled_back")
ROLLBACK_REASONS = ("error_ratio", "latency", "high_risk")


# Below this many values a plain observe() per value is cheaper than the numpy round trip.
_AGGREGATE_FROM = 16


def observe_many(histogram: Histogram, values: Sequence[float] | np.ndarray) -> None:
    """Histogram.observe(v) for every v, as one increment per bucket and one for the sum.

    A 1,000-row batch would otherwise cost 1,000 observe() calls, each a bucket scan and (in
    multiprocess mode) two locked writes to the mmap file. Uses the unlabelled histogram's
    bucket values (prometheus_client keeps them per bucket, not cumulative); the API test
    checks the exposition is the same as observing one by one.
    """
    if len(values) < _AGGREGATE_FROM:
        for value in values:
            histogram.observe(value)
        return
    array = np.asarray(values, dtype=float)
    bounds = histogram._upper_bounds
    # observe() counts a value in the first bucket whose bound is >= it (NaN: in none).
    index = np.searchsorted(np.asarray(bounds, dtype=float), array, side="left")
    counts = np.bincount(index, minlength=len(bounds) + 1)[: len(bounds)]
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(array.sum()))


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """Every metric of the API contract (see monitoring/ for the queries that read them)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # outcome="success" | "error" (a validated request whose prediction failed), as
        # the dashboards and alerts people copy expect; the decision split is its own metric.
        # role: the model that answered ("champion" | "challenger"), for every metric below
        # that counts answers.
        self.predictions = Counter(
            "predictions_total",
            "Predictions by outcome: success (answered) or error (validated, then failed), "
            "by the role of the model that answered",
            ["outcome", "role"],
            registry=r,
        )
        self.decisions = Counter(
            "prediction_decisions_total",
            "Answered predictions by decision (churn / no_churn) and role",
            ["decision", "role"],
            registry=r,
        )
        self.high_risk = Counter(
            "high_risk_predictions_total",
            "Predictions in the HIGH risk tier, by role",
            ["role"],
            registry=r,
        )
        self.latency = Histogram(
            "prediction_latency_seconds",
            "Model call time per request (queue + inference), by role",
            ["role"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Progressive delivery (app.rollout).
        self.shadow = Counter(
            "shadow_predictions_total",
            "Rows the model that did not answer scored in shadow: success, error (it failed), "
            "dropped (not scored for a full shadow queue, or its log record dropped)",
            ["outcome"],
            registry=r,
        )
        self.shadow_latency = Histogram(
            "shadow_latency_seconds",
            "The shadow model's scoring time per call (off the answer's path)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.canary_share = Gauge(
            "rollout_canary_share",
            "Share of traffic this worker lets the challenger answer now",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.rollout_stage = Gauge(
            "rollout_stage",
            "1 for the rollout stage this worker applies (no series: no challenger)",
            ["stage"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.rollbacks = Counter(
            "rollout_rollbacks_total",
            "Canaries rolled back by a guardrail of this API, by reason",
            ["reason"],
            registry=r,
        )
        self.challenger_refused = Counter(
            "challenger_refused_total",
            "Challenger versions refused by a worker, by reason",
            ["reason"],
            registry=r,
        )
        self.probability = Histogram(
            "prediction_probability",
            "Predicted churn probabilities",
            buckets=PROBABILITY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by route and status",
            ["method", "route", "status"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        # liveall: one series per live worker (a pid label in multiprocess mode), so a worker
        # that serves another version shows, and a dead worker's series goes with it
        # (drop_dead_workers) instead of holding a stale 1.
        self.model_info = Gauge(
            "model_info",
            "The model being served (1) and previously served ones (0)",
            ["model_name", "model_version", "run_id", "backend"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.alias_mismatch = Gauge(
            "model_alias_mismatch",
            "1 when the registry alias points at another version than the one served",
            ["alias"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.reloads = Counter(
            "model_reloads_total", "Model reloads by result", ["result"], registry=r
        )
        self.dropped = Counter(
            "prediction_log_dropped_total",
            "Prediction log records dropped, by reason",
            ["reason"],
            registry=r,
        )
        self.unknown_category = Counter(
            "unknown_category_total",
            "Categories not seen in training, by feature",
            ["feature"],
            registry=r,
        )
        self.explained = Counter(
            "explained_predictions_total",
            "Predictions answered with an explanation (?explain=true)",
            registry=r,
        )
        for result in ("success", "failure"):
            self.reloads.labels(result)
        for reason in ("queue_full", "write_error", "shutdown", "disabled"):
            self.dropped.labels(reason)
        for outcome in ("success", "error", "dropped"):
            self.shadow.labels(outcome)
        for reason in ROLLBACK_REASONS:
            self.rollbacks.labels(reason)
        self.success = {role: self.predictions.labels("success", role) for role in ROLES}
        self.error = {role: self.predictions.labels("error", role) for role in ROLES}
        self.decision = {
            role: {
                True: self.decisions.labels("churn", role),
                False: self.decisions.labels("no_churn", role),
            }
            for role in ROLES
        }
        self.high_risk_of = {role: self.high_risk.labels(role) for role in ROLES}
        self.latency_of = {role: self.latency.labels(role) for role in ROLES}
        self._http: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._lock = threading.Lock()
        self._pending_http: dict[tuple[str, str, int], list[float]] = {}
        # per role: churn, no churn, high risk, errors
        self._pending_counts = {role: [0, 0, 0, 0] for role in ROLES}
        self._pending_probabilities: list[float] = []
        self._pending_latencies: dict[str, list[float]] = {role: [] for role in ROLES}
        # told each flush's answers per role (rows, HIGH tier): the canary's guardrail window
        # counts the champion's from here, with no work of its own per request
        self.on_answers: Callable[[str, int, int], None] | None = None

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one HTTP request (applied with the rest of this loop iteration's)."""
        with self._lock:
            pending = self._pending_http.get((method, route, status))
            if pending is None:
                self._pending_http[(method, route, status)] = [seconds]
            else:
                pending.append(seconds)
        self._schedule()

    def observe_predictions(
        self,
        probabilities: Sequence[float] | np.ndarray,
        decisions: list[bool],
        high_risk: int,
        seconds: float,
        role: str = "champion",
    ) -> None:
        """Count one call's predictions (applied with the rest of this loop iteration's)."""
        churn = sum(decisions)
        with self._lock:
            counts = self._pending_counts[role]
            counts[0] += churn
            counts[1] += len(decisions) - churn
            counts[2] += high_risk
            self._pending_probabilities.extend(probabilities)
            self._pending_latencies[role].append(seconds)
        self._schedule()

    def observe_prediction_errors(self, rows: int, role: str = "champion") -> None:
        """Count `rows` validated predictions that failed (the model or the server)."""
        with self._lock:
            self._pending_counts[role][3] += rows
        self._schedule()

    def set_rollout(self, stage: str | None, share: float) -> None:
        """The stage and canary share this worker applies (stage None: no challenger)."""
        self.canary_share.set(share)
        for name in ROLLOUT_STAGES:
            if name == stage:
                self.rollout_stage.labels(name).set(1)
            else:
                self.rollout_stage.labels(name).set(0)

    def count_dropped(self, reason: str, rows: int) -> None:
        """Count prediction-log records dropped for `reason`, at once (never deferred: a
        count made at shutdown must reach the metrics before the process ends)."""
        self.dropped.labels(reason).inc(rows)

    def _schedule(self) -> None:
        """Apply pending observations at the end of the current loop iteration (at once when
        there is no running loop). In multiprocess mode every increment is a locked write to
        the worker's mmap file; summed per iteration they cost a few writes, not a few per
        request."""
        defer(self.flush)

    def flush(self) -> None:
        """Apply every pending observation to the metrics."""
        with self._lock:
            http, self._pending_http = self._pending_http, {}
            counts = self._pending_counts
            self._pending_counts = {role: [0, 0, 0, 0] for role in ROLES}
            probabilities, self._pending_probabilities = self._pending_probabilities, []
            latencies = self._pending_latencies
            self._pending_latencies = {role: [] for role in ROLES}
        for key, durations in http.items():
            counter, histogram = self._http_children(*key)
            counter.inc(len(durations))
            observe_many(histogram, durations)
        for role, (churn, no_churn, high_risk, errors) in counts.items():
            if churn or no_churn:
                self.success[role].inc(churn + no_churn)
            if churn:
                self.decision[role][True].inc(churn)
            if no_churn:
                self.decision[role][False].inc(no_churn)
            if errors:
                self.error[role].inc(errors)
            if high_risk:
                self.high_risk_of[role].inc(high_risk)
        if probabilities:
            observe_many(self.probability, probabilities)
        for role, seconds in latencies.items():
            if seconds:
                observe_many(self.latency_of[role], seconds)
        listener = self.on_answers  # last: the metrics are applied whatever it does
        if listener is not None:
            for role, (churn, no_churn, high_risk, _) in counts.items():
                if churn or no_churn:
                    listener(role, churn + no_churn, high_risk)

    def _http_children(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        """The labelled counter and histogram of one (method, route, status), cached."""
        key = (method, route, status)
        children = self._http.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.duration.labels(method, route, str(status)),
            )
            self._http[key] = children
        return children

    def set_model(
        self,
        name: str,
        version: str,
        run_id: str,
        backend: str,
        previous: tuple[str, str, str, str] | None,
    ) -> None:
        if previous is not None:
            self.model_info.labels(*previous).set(0)
        self.model_info.labels(name, version, run_id, backend).set(1)

    def set_alias_mismatch(self, alias: str, mismatch: bool) -> None:
        self.alias_mismatch.labels(alias).set(1 if mismatch else 0)

    def render(self) -> tuple[bytes, str]:
        """The exposition text: summed across workers in multiprocess mode."""
        self.flush()
        if multiprocess_dir() is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        drop_dead_workers()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_process_dead() -> None:
    """Remove this worker's live gauges (model_info) from the multiprocess directory."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(os.getpid())


_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]*_(\d+)\.db$")


def drop_dead_workers() -> list[int]:
    """Remove the live gauges of worker processes that no longer exist.

    A worker killed with SIGKILL never runs its shutdown, so its gauge file would keep its
    model_info at 1 forever; the survivors notice the missing pid here. Returns those pids.
    """
    directory = multiprocess_dir()
    if directory is None:
        return []
    dead = set()
    for name in os.listdir(directory):
        match = _LIVE_GAUGE_FILE.match(name)
        if match and not pid_alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)
    return sorted(dead)
