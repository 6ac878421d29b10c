"""Risk tiers from churn probabilities: one definition for training reports and serving."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

HIGH, MEDIUM, LOW = "HIGH", "MEDIUM", "LOW"
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
        """The bundle's "risk" section with explicit overrides (RISK_HIGH...) on top, both
        validated with the config's RiskConfig rules, the ones training applied.

        Raises ValueError naming the bad key (bundle) or the override."""
        from pydantic import ValidationError

        from churn.bundle import describe_validation_error
        from churn.config import RiskConfig

        try:
            risk = RiskConfig.model_validate(metadata.get("risk") or {})  # none: the defaults
        except ValidationError as exc:
            raise ValueError(
                f"bundle metadata: {describe_validation_error(exc, prefix='risk')}"
            ) from None
        overrides = {"high": high, "medium": medium, "decision_threshold": decision}
        merged = {**risk.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        try:
            risk = RiskConfig.model_validate(merged)
        except ValidationError as exc:
            raise ValueError(
                f"risk thresholds: {describe_validation_error(exc)}; check RISK_HIGH, "
                "RISK_MEDIUM and DECISION_THRESHOLD against the bundle's risk section"
            ) from None
        return cls(high=risk.high, medium=risk.medium, decision=risk.decision_threshold)


def risk_tiers(probabilities: np.ndarray, high: float, medium: float) -> np.ndarray:
    """HIGH at or above `high`, MEDIUM at or above `medium`, LOW below (vectorised)."""
    p = np.asarray(probabilities, dtype=float)
    return np.where(p >= high, HIGH, np.where(p >= medium, MEDIUM, LOW))


def risk_tier_list(probabilities: np.ndarray, high: float, medium: float) -> list[str]:
    """`risk_tiers` as a list: row by row for a few rows (cheaper than numpy's calls there),
    vectorised for more; the same tiers either way."""
    if len(probabilities) <= 16:
        return [risk_tier(p, high, medium) for p in np.asarray(probabilities, float).tolist()]
    tiers: list[str] = risk_tiers(probabilities, high, medium).tolist()
    return tiers


def risk_tier(probability: float, high: float, medium: float) -> str:
    if probability >= high:
        return HIGH
    return MEDIUM if probability >= medium else LOW
