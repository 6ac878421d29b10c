"""Paired log-loss and Brier differences: per customer, the challenger's loss minus the
champion's, so each customer is their own control; the interval is the normal one on the mean
of those per-row differences (n is in the hundreds at least before anything is decided)."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

from monitoring.rollout.stats.base import PairedDifference, z_value

_EPS = 1e-6  # probabilities are served rounded to 4 places: 0 and 1 happen


def _log_loss(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def _brier(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (p - y) ** 2


def _paired(metric: str, a: np.ndarray, b: np.ndarray, confidence: float) -> PairedDifference:
    d = b - a
    n = len(d)
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    z = z_value(confidence)
    p_value = float(2 * norm.sf(abs(mean) / se)) if se > 0 else float(mean == 0)
    return PairedDifference(
        metric=metric,
        method="paired_mean",
        champion=float(a.mean()),
        challenger=float(b.mean()),
        difference=mean,
        lower=mean - z * se,
        upper=mean + z * se,
        standard_error=se,
        p_value=p_value,
        confidence=confidence,
        pairs=n,
    )


def paired_loss_differences(
    champion: np.ndarray, challenger: np.ndarray, labels: np.ndarray, confidence: float = 0.95
) -> tuple[PairedDifference, PairedDifference]:
    """(log loss, Brier score) differences, challenger - champion: lower is better for both."""
    y = np.asarray(labels, dtype=float)
    a = np.asarray(champion, dtype=float)
    b = np.asarray(challenger, dtype=float)
    return (
        _paired("log_loss", _log_loss(a, y), _log_loss(b, y), confidence),
        _paired("brier", _brier(a, y), _brier(b, y), confidence),
    )
