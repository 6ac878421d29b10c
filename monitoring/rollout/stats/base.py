"""What the paired comparisons share: the normal quantile and the labels-still-needed
estimate (their value type, PairedDifference, lives with the other results)."""

from __future__ import annotations

import math

from scipy.stats import norm

from monitoring.rollout.results import PairedDifference

__all__ = ["PairedDifference", "labels_needed", "z_value"]


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
