"""One monitoring window judged from the bundle alone: estimated performance, its reconciliation
with the labels that have arrived, and the segment table.

Everything comes from the served bundle's metadata: the decision threshold (`risk`), the
calibrator (`calibration`), the segments (`monitoring`, saved from config.yaml at training) with
their categories bounded by the feature schema, and the validation rows the segment test uses
as its baseline (`reference_profile.validation`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from churn.calibration import Calibrator
from monitoring.performance.estimate import DEFAULT_BAND, estimate_performance
from monitoring.performance.results import PerformanceReport
from monitoring.performance.segments import Reference, SegmentSpec, analyse_segments


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
