"""Risk tiers from churn probabilities: one definition for training reports and serving."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HIGH, MEDIUM, LOW = "HIGH", "MEDIUM", "LOW"


@dataclass(frozen=True)
class Thresholds:
    """Tier boundaries and the decision threshold a model is served with."""

    high: float
    medium: float
    decision: float


def risk_tiers(probabilities: np.ndarray, high: float, medium: float) -> np.ndarray:
    """HIGH at or above `high`, MEDIUM at or above `medium`, LOW below (vectorised)."""
    p = np.asarray(probabilities, dtype=float)
    return np.where(p >= high, HIGH, np.where(p >= medium, MEDIUM, LOW))


def risk_tier(probability: float, high: float, medium: float) -> str:
    if probability >= high:
        return HIGH
    return MEDIUM if probability >= medium else LOW
