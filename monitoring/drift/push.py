"""Pushing a drift run's gauges to a Prometheus Pushgateway (the names are the alert rules'
contract, tests/metric_contract.py)."""

from __future__ import annotations

import math
from typing import Any

from monitoring.drift.results import DriftInputError, DriftRun
from monitoring.performance.results import PerformanceReport

DEFAULT_JOB = "drift_monitor"


def push_metrics(run: DriftRun, gateway: str, job: str = DEFAULT_JOB) -> None:
    """Push the run's gauges to `gateway` under `job`.

    Undefined values (no p-value for lack of rows, skipped live metrics) are not pushed at
    all rather than pushed as NaN, so alert expressions never compare against NaN.
    ``drift_insufficient_data`` is 1 when nothing was judged, so an alert can tell "quiet"
    from "blind".
    """
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    labels = ["feature"]
    p_value = Gauge("drift_feature_p_value", "Corrected drift p-value", labels, registry=registry)
    effect = Gauge("drift_feature_effect_size", "Drift effect size", labels, registry=registry)
    flagged = Gauge("drift_feature_drifted", "1 if the feature drifted", labels, registry=registry)
    for report in run.features:
        flagged.labels(report.feature).set(int(report.drifted))
        if math.isfinite(report.p_value_corrected):
            p_value.labels(report.feature).set(report.p_value_corrected)
        if math.isfinite(report.effect_size):
            effect.labels(report.feature).set(report.effect_size)
    _gauge(
        registry,
        "drift_detected",
        "1 if any feature or the predictions drifted",
        int(run.drift_detected),
    )
    _gauge(
        registry,
        "drift_insufficient_data",
        "1 if no feature had enough rows for a verdict (nothing judged)",
        int(run.nothing_judged),
    )
    if run.prediction is not None:
        _gauge(
            registry,
            "drift_prediction_drifted",
            "1 if the predictions drifted",
            int(run.prediction.drifted),
        )
        if math.isfinite(run.prediction.p_value):
            _gauge(
                registry,
                "drift_prediction_p_value",
                "Prediction drift p-value",
                run.prediction.p_value,
            )
    _gauge(
        registry,
        "drift_last_run_timestamp_seconds",
        "End of the last drift run",
        run.finished_at.timestamp(),
    )
    if run.live is not None:
        _gauge(
            registry,
            "live_labelled_samples",
            "Labelled rows in the window",
            run.live.labelled_samples,
        )
        for name in ("auc", "precision", "recall"):
            value = getattr(run.live, name)
            if value is not None:
                _gauge(registry, f"live_{name}", f"Live {name} on labelled rows", value)
    if run.performance is not None:
        add_performance_metrics(run.performance, registry)
    try:
        push_to_gateway(gateway, job=job, registry=registry, timeout=10)
    except OSError as exc:
        raise DriftInputError(f"pushgateway {gateway}: push failed ({exc})") from exc


def _gauge(registry: Any, name: str, help_text: str, value: float) -> None:
    from prometheus_client import Gauge

    Gauge(name, help_text, registry=registry).set(value)


def add_performance_metrics(report: PerformanceReport, registry: Any) -> None:
    """The report as Prometheus gauges on `registry` (pushed with the drift job's metrics).

    Labels are bounded: metric names from a fixed list, segments by the schema's categories
    (or band names) plus `other`."""
    from prometheus_client import Gauge

    estimated = Gauge(
        "churn_estimated_metric",
        "Performance estimated without labels",
        ["metric"],
        registry=registry,
    )
    realised = Gauge(
        "churn_realised_metric",
        "Performance on the labelled rows of the window",
        ["metric"],
        registry=registry,
    )
    error = Gauge(
        "churn_estimation_error",
        "Realised minus estimated, labelled rows",
        ["metric"],
        registry=registry,
    )
    for m in report.estimate.metrics:
        if math.isfinite(m.estimate):
            estimated.labels(m.name).set(m.estimate)
    for m in report.estimate.reconciled:
        if m.realised is not None:
            realised.labels(m.name).set(m.realised)
        if m.error is not None:
            error.labels(m.name).set(m.error)
    Gauge(
        "churn_concept_shift", "1 if a realised metric left its estimate's band", registry=registry
    ).set(int(report.estimate.concept_shift))
    Gauge("churn_estimated_rows", "Predictions in the estimated window", registry=registry).set(
        report.estimate.rows
    )
    if report.gate_auc is not None:
        Gauge("churn_gate_min_auc", "The promotion gate's AUC floor", registry=registry).set(
            report.gate_auc
        )
    predicted = Gauge(
        "churn_segment_predicted_rate",
        "Mean calibrated churn probability per segment",
        ["feature", "segment"],
        registry=registry,
    )
    observed = Gauge(
        "churn_segment_observed_rate",
        "Observed churn rate of the labelled rows per segment",
        ["feature", "segment"],
        registry=registry,
    )
    flag = Gauge(
        "churn_segment_miscalibrated",
        "1 under-predicted, -1 over-predicted, 0 in line (step-down test)",
        ["feature", "segment"],
        registry=registry,
    )
    sign = {"under_predicted": 1, "over_predicted": -1}
    for s in report.segments.segments:
        predicted.labels(s.feature, s.value).set(s.estimated_churn_rate)
        if s.realised_churn_rate is not None:
            observed.labels(s.feature, s.value).set(s.realised_churn_rate)
        if s.verdict != "insufficient_data":
            flag.labels(s.feature, s.value).set(sign.get(s.verdict, 0))
