"""The drift job's result types: immutable values, built once, read by rendering and pushing.

Nothing here computes a statistic or touches a file, so the report renderer and the
Pushgateway client import this module alone (and the closed loop reads the same verdicts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from churn.profile import ReferenceProfile
    from monitoring.performance.results import PerformanceReport
    from monitoring.quality.results import LiveQuality

Status = Literal["ok", "drift", "insufficient_data"]
Verdict = Literal["no_drift", "drift", "insufficient_data"]

# The drift CLI's exit codes (documented in its --help, the README and the Makefile).
EXIT_OK = 0  # every judged feature (and the predictions) stayed put
EXIT_DRIFT = 1  # at least one feature or the predictions drifted
EXIT_ERROR = 2  # the check could not run (bad input, unreadable store, push failed)
EXIT_INSUFFICIENT = 3  # too few rows everywhere: nothing was judged, so no "no drift" claim
EXIT_CODES: Mapping[int, str] = {
    EXIT_OK: "no drift: something was judged and nothing moved",
    EXIT_DRIFT: "drift in at least one feature or in the predictions",
    EXIT_ERROR: "error: bad input, missing file or store, push failed (one line on stderr)",
    EXIT_INSUFFICIENT: "insufficient data: nothing judged (no feature had --min-rows rows)",
}


class DriftInputError(ValueError):
    """The inputs cannot be compared; the message names the file or column to fix."""


@dataclass(frozen=True)
class EffectThresholds:
    """Minimum effect sizes for a significant test to count as drift.

    Defaults are calibrated on synthetic data (tests/test_drift_stats.py): a 0.3 SD mean shift
    (normalised Wasserstein ≈ 0.3) or a 10-point move in a category share (JS ≈ 0.07–0.1) at
    1,000 rows is caught ≥ 9 times in 10, while a 0.01 SD shift on a million rows (≈ 0.01)
    is not an alarm. ``wasserstein`` 0.1 means "the distribution moved by a tenth of a
    reference SD"; ``js`` 0.05 is about a new category taking 1 % of traffic.
    """

    wasserstein: float = 0.1
    js: float = 0.05
    missing_rate: float = 0.05

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"effect threshold {name} must be a finite number >= 0")


@dataclass(frozen=True)
class DriftReport:
    """Verdict and evidence for one feature (or for the predictions).

    ``n_reference``/``n_current`` count the non-missing rows each side describes; for numeric
    features ``reference_sample_size`` says how many reference values the KS test and the
    Wasserstein distance used (a profile keeps a sample; PSI and missing rates use all rows).
    ``p_value_corrected`` is the p-value after the run's multiple-testing correction; ``drifted``
    requires it to be below alpha and ``effect_size`` to reach ``effect_threshold``.
    """

    feature: str
    kind: str
    test_used: str
    statistic: float
    p_value: float
    p_value_corrected: float
    effect_size: float
    effect_size_name: str
    effect_threshold: float
    psi: float
    drifted: bool
    status: Status
    n_reference: int
    n_current: int
    missing_rate_reference: float
    missing_rate_current: float
    missing_p_value: float = float("nan")
    missing_p_value_corrected: float = float("nan")
    missing_rate_drifted: bool = False
    unseen_categories: Mapping[str, float] = field(default_factory=dict)
    reference_sample_size: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def judged(self) -> bool:
        """A verdict was reached (drift or not), rather than "too few rows"."""
        return self.status != "insufficient_data"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: NaN and infinities become null (JSON has neither)."""
        out = asdict(self)
        out["unseen_categories"] = dict(self.unseen_categories)
        out["notes"] = list(self.notes)
        return {k: json_safe(v) for k, v in out.items()}


@dataclass(frozen=True)
class DriftRun:
    """One drift check: every feature's report, the predictions' and live quality."""

    features: tuple[DriftReport, ...]
    prediction: DriftReport | None
    live: LiveQuality | None
    reference: ReferenceProfile
    reference_label: str
    current_label: str
    current_rows: int
    alpha: float
    correction: str
    min_rows: int
    finished_at: datetime
    prediction_column: str = "probability"
    # estimated performance and segments (monitoring.performance), when the reference is a
    # bundle and the rows carry the served probabilities
    performance: PerformanceReport | None = None

    def __post_init__(self) -> None:
        # Callers may build a run from detect_feature_drift's list; keep it immutable.
        object.__setattr__(self, "features", tuple(self.features))

    @property
    def reports(self) -> tuple[DriftReport, ...]:
        """Every report: the features, then the predictions when they were compared."""
        return self.features + ((self.prediction,) if self.prediction else ())

    @property
    def drifted_features(self) -> list[str]:
        return [r.feature for r in self.features if r.drifted]

    @property
    def drift_detected(self) -> bool:
        """Any feature drifted, or the predictions did."""
        return bool(self.drifted_features) or bool(self.prediction and self.prediction.drifted)

    @property
    def nothing_judged(self) -> bool:
        """No feature and not the predictions had enough rows for a verdict."""
        return not any(r.judged for r in self.reports)

    @property
    def verdict(self) -> Verdict:
        """Drift wins; otherwise "no drift" only when something was actually judged."""
        if self.drift_detected:
            return "drift"
        return "insufficient_data" if self.nothing_judged else "no_drift"

    @property
    def exit_code(self) -> int:
        return {"drift": EXIT_DRIFT, "no_drift": EXIT_OK, "insufficient_data": EXIT_INSUFFICIENT}[
            self.verdict
        ]

    def summary_line(self) -> str:
        """The headline: what drifted, or "no feature drift", or "nothing judged"."""
        rows = f" ({self.current_rows:,} current rows)"
        if self.verdict == "insufficient_data":
            return (
                f"insufficient data: nothing judged (every one of {len(self.features)} features "
                f"has fewer than {self.min_rows:,} rows on one side){rows}"
            )
        drifted = self.drifted_features
        parts = [
            f"DRIFT in {len(drifted)} of {len(self.features)} features: {', '.join(drifted)}"
            if drifted
            else f"no feature drift in {len(self.features)} features"
        ]
        if self.prediction is not None:
            parts.append(f"predictions {self.prediction.status}")
        else:
            parts.append("predictions not compared (no probabilities on one side)")
        insufficient = [r.feature for r in self.features if not r.judged]
        if insufficient:
            parts.append(f"too few rows to judge: {', '.join(insufficient)}")
        return "; ".join(parts) + rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "drift_detected": self.drift_detected,
            "drifted_features": self.drifted_features,
            "summary": self.summary_line(),
            "reference": self.reference_label,
            "current": self.current_label,
            "current_rows": self.current_rows,
            "alpha": self.alpha,
            "correction": self.correction,
            "min_rows": self.min_rows,
            "finished_at": self.finished_at.isoformat(),
            "features": [r.to_dict() for r in self.features],
            "prediction": self.prediction.to_dict() if self.prediction else None,
            "live_quality": json_safe(self.live.to_dict()) if self.live else None,
            "performance": json_safe(self.performance.to_dict()) if self.performance else None,
        }


def json_safe(value: Any) -> Any:
    """NaN and infinities become None, recursively (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
