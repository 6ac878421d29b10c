"""One monitoring window judged from the bundle alone: estimated performance, its reconciliation
with the labels that have arrived, and the segment table.

Everything comes from the served bundle's metadata: the decision threshold (`risk`), the
calibrator (`calibration`), the segments (`monitoring`, saved from config.yaml at training) with
their categories bounded by the feature schema, and the validation rows the segment test uses
as its baseline (`reference_profile.validation`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from churn.calibration import Calibrator
from monitoring.performance.estimate import (
    DEFAULT_BAND,
    PerformanceEstimate,
    estimate_performance,
)
from monitoring.performance.segments import (
    Reference,
    SegmentReport,
    SegmentSpec,
    analyse_segments,
)


@dataclass(frozen=True)
class PerformanceReport:
    """The estimated-performance section of a monitoring report."""

    estimate: PerformanceEstimate
    segments: SegmentReport
    calibration_method: str
    gate_auc: float | None = None

    @property
    def estimated_auc_below_gate(self) -> bool:
        auc = self.estimate.metric("roc_auc").estimate if self.estimate.metrics else None
        return self.gate_auc is not None and auc is not None and auc < self.gate_auc

    def to_dict(self) -> dict[str, Any]:
        def metric_rows(rows: tuple) -> list[dict[str, Any]]:
            return [{**asdict(m), "error": m.error, "flagged": m.flagged} for m in rows]

        return {
            "rows": self.estimate.rows,
            "labelled": self.estimate.labelled,
            "threshold": self.estimate.threshold,
            "band": self.estimate.band,
            "calibration": self.calibration_method,
            "gate_auc": self.gate_auc,
            "estimated_auc_below_gate": self.estimated_auc_below_gate,
            "concept_shift": self.estimate.concept_shift,
            "flagged_metrics": self.estimate.flagged_metrics,
            "estimated": metric_rows(self.estimate.metrics),
            "reconciled": metric_rows(self.estimate.reconciled),
            "segments": {
                "alpha": self.segments.alpha,
                "tested": self.segments.tested,
                "rows": [{**asdict(s), "name": s.name} for s in self.segments.segments],
            },
        }


def segment_specs(metadata: dict[str, Any]) -> list[SegmentSpec]:
    """The bundle's segments, categories bounded by its feature schema."""
    features = {f["name"]: f for f in metadata["feature_schema"]["features"]}
    specs = []
    for segment in (metadata.get("monitoring") or {}).get("segments") or []:
        feature = features.get(segment["feature"])
        if feature is None:
            continue
        if segment.get("bins"):
            specs.append(SegmentSpec(segment["feature"], edges=tuple(segment["bins"])))
        else:
            categories = feature.get("allowed") or feature.get("categories") or []
            specs.append(SegmentSpec(segment["feature"], categories=tuple(categories)))
    return specs


def validation_reference(metadata: dict[str, Any], calibrator: Calibrator) -> Reference | None:
    sample = (metadata.get("reference_profile") or {}).get("validation")
    if not sample or not sample.get("label"):
        return None
    return Reference(
        frame=pd.DataFrame(sample["features"]),
        calibrated=calibrator.apply(np.asarray(sample["probability"], dtype=float)),
        labels=np.asarray(sample["label"], dtype=float),
    )


def analyse_window(
    frame: pd.DataFrame,
    metadata: dict[str, Any],
    probability_column: str = "probability",
    outcome_column: str = "outcome",
    seed: int = 0,
) -> PerformanceReport:
    """Estimated performance and segments of the rows in `frame` (one prediction per row:
    features, the served probability and, where feedback arrived, the outcome)."""
    settings = metadata.get("monitoring") or {}
    calibrator = Calibrator.from_metadata(metadata.get("calibration"))
    threshold = float((metadata.get("risk") or {}).get("decision_threshold", 0.5))
    probabilities = frame[probability_column].to_numpy(dtype=float)
    calibrated = calibrator.apply(probabilities)
    labels = (
        pd.to_numeric(frame[outcome_column], errors="coerce").to_numpy(dtype=float)
        if outcome_column in frame
        else None
    )
    estimate = estimate_performance(
        probabilities,
        calibrated,
        threshold,
        labels=labels,
        band=float(settings.get("estimate_band", DEFAULT_BAND)),
        seed=seed,
    )
    segments = analyse_segments(
        frame,
        segment_specs(metadata),
        probabilities,
        calibrated,
        labels,
        alpha=float(settings.get("segment_alpha", 0.05)),
        min_rows=int(settings.get("segment_min_rows", 100)),
        reference=validation_reference(metadata, calibrator),
    )
    gate = (metadata.get("gate") or {}).get("min_val_auc")
    return PerformanceReport(
        estimate, segments, calibrator.method, float(gate) if gate is not None else None
    )


def add_metrics(report: PerformanceReport, registry: Any) -> None:
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
        if np.isfinite(m.estimate):
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
