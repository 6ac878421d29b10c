"""The value every paired comparison returns, and the labels-still-needed estimate."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import norm


@dataclass(frozen=True)
class PairedDifference:
    """challenger - champion for one metric on the same customers, with a two-sided interval.

    ``standard_error`` is the method's own (DeLong's variance, the bootstrap's spread, the
    paired per-row differences' standard error); ``p_value`` tests "no difference".
    """

    metric: str
    method: str
    champion: float
    challenger: float
    difference: float
    lower: float
    upper: float
    standard_error: float
    p_value: float
    confidence: float
    pairs: int

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "metric": self.metric,
            "method": self.method,
            "champion": self.champion,
            "challenger": self.challenger,
            "difference": self.difference,
            "lower": self.lower,
            "upper": self.upper,
            "standard_error": self.standard_error,
            "p_value": self.p_value,
            "confidence": self.confidence,
            "pairs": self.pairs,
        }


def z_value(confidence: float) -> float:
    """The normal quantile of a two-sided interval at `confidence` (1.96 at 0.95)."""
    return float(norm.ppf(0.5 + confidence / 2))


def labels_needed(
    difference: float, standard_error: float, pairs: int, margin: float, confidence: float
) -> int | None:
    """Labelled pairs at which the lower bound would clear -margin, if the difference stays.

    The standard error of a paired AUC difference shrinks like 1/sqrt(n), so at N pairs it is
    about se * sqrt(n / N) and the lower bound is d - z * se * sqrt(n / N). Solving
    d - z * se * sqrt(n / N) >= -margin for N gives N >= n * (z * se / (d + margin))^2.
    None when d <= -margin: at the current estimate no number of labels shows
    non-inferiority (only a change in the difference would).
    """
    if not (math.isfinite(difference) and math.isfinite(standard_error)) or pairs <= 0:
        return None
    gap = difference + margin
    if gap <= 0:
        return None
    z = z_value(confidence)
    return max(pairs, math.ceil(pairs * (z * standard_error / gap) ** 2))
