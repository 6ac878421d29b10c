"""Result types of label-free performance monitoring: immutable values, read by rendering and
pushing (monitoring.drift.report, monitoring.drift.push) without importing any statistics."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

Verdict = Literal["under_predicted", "over_predicted", "ok", "insufficient_data"]


@dataclass(frozen=True)
class MetricEstimate:
    """One metric of one window: the estimate, its band and, with labels, the realised value."""

    name: str
    estimate: float
    low: float
    high: float
    realised: float | None = None

    @property
    def error(self) -> float | None:
        """Realised minus estimated (None until labels cover the window)."""
        return None if self.realised is None else self.realised - self.estimate

    @property
    def flagged(self) -> bool:
        """The realised value left the band the estimate allowed."""
        return self.realised is not None and not (self.low <= self.realised <= self.high)


@dataclass(frozen=True)
class PerformanceEstimate:
    """Estimated (and, where labelled, realised) performance of one window."""

    rows: int
    labelled: int
    threshold: float
    band: float
    metrics: tuple[MetricEstimate, ...]
    # the same metrics on the labelled rows only, with their realised values
    reconciled: tuple[MetricEstimate, ...] = ()

    def metric(self, name: str) -> MetricEstimate:
        return next(m for m in self.metrics if m.name == name)

    @property
    def concept_shift(self) -> bool:
        """Labels covered part of the window and some metric fell outside its band."""
        return any(m.flagged for m in self.reconciled)

    @property
    def flagged_metrics(self) -> list[str]:
        return [m.name for m in self.reconciled if m.flagged]


@dataclass(frozen=True)
class SegmentResult:
    feature: str
    value: str
    rows: int
    labelled: int
    mean_probability: float
    estimated_churn_rate: float
    realised_churn_rate: float | None = None
    expected_churn_rate_labelled: float | None = None
    estimated_auc: float | None = None
    realised_auc: float | None = None
    p_value: float | None = None
    verdict: Verdict = "insufficient_data"

    @property
    def name(self) -> str:
        return f"{self.feature} = {self.value}"


@dataclass(frozen=True)
class SegmentReport:
    alpha: float
    tested: int
    segments: tuple[SegmentResult, ...]

    @property
    def flagged(self) -> list[SegmentResult]:
        return [s for s in self.segments if s.verdict in ("under_predicted", "over_predicted")]


@dataclass(frozen=True)
class PerformanceReport:
    """The estimated-performance section of a monitoring report."""

    estimate: PerformanceEstimate
    segments: SegmentReport
    calibration_method: str
    gate_auc: float | None = None

    @property
    def estimated_auc_below_gate(self) -> bool:
        """The estimated AUC's whole band lies below the promotion gate: confidently below,
        not a small window's noise (what the closed loop acts on)."""
        if self.gate_auc is None or not self.estimate.metrics:
            return False
        high = self.estimate.metric("roc_auc").high
        return math.isfinite(high) and high < self.gate_auc

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
