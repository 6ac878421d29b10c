"""Risk tiers from churn probabilities: one definition for training reports and serving."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

HIGH, MEDIUM, LOW = "HIGH", "MEDIUM", "LOW"
# A bundle without a "risk" section (older exports) is served with these.
DEFAULT_RISK = {"high": 0.75, "medium": 0.45, "decision_threshold": 0.5}
# Served probabilities are rounded to this many places (the API and the nightly batch agree).
PROBABILITY_DECIMALS = 4


@dataclass(frozen=True)
class Thresholds:
    """Tier boundaries and the decision threshold a model is served with."""

    high: float
    medium: float
    decision: float

    @classmethod
    def from_metadata(
        cls,
        metadata: Mapping[str, Any],
        *,
        high: float | None = None,
        medium: float | None = None,
        decision: float | None = None,
    ) -> Thresholds:
        """The bundle's "risk" section (defaults where absent), with explicit overrides first.

        Raises ValueError when medium exceeds high: tiers would be undefined."""
        risk = {**DEFAULT_RISK, **(metadata.get("risk") or {})}
        chosen = cls(
            high=float(risk["high"]) if high is None else high,
            medium=float(risk["medium"]) if medium is None else medium,
            decision=float(risk["decision_threshold"]) if decision is None else decision,
        )
        if chosen.medium > chosen.high:
            raise ValueError(f"medium ({chosen.medium}) exceeds high ({chosen.high})")
        return chosen


def risk_tiers(probabilities: np.ndarray, high: float, medium: float) -> np.ndarray:
    """HIGH at or above `high`, MEDIUM at or above `medium`, LOW below (vectorised)."""
    p = np.asarray(probabilities, dtype=float)
    return np.where(p >= high, HIGH, np.where(p >= medium, MEDIUM, LOW))


def risk_tier(probability: float, high: float, medium: float) -> str:
    if probability >= high:
        return HIGH
    return MEDIUM if probability >= medium else LOW
