"""Multiple-testing corrections for the p-values of one run's family of tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import stats

Correction = Literal["bonferroni", "holm", "bh", "none"]
CORRECTIONS: tuple[str, ...] = ("bonferroni", "holm", "bh", "none")


def correct_p_values(p_values: Sequence[float], method: str) -> np.ndarray:
    """Adjusted p-values: Bonferroni and Holm control the family-wise error rate, ``bh``
    (Benjamini–Hochberg) the false-discovery rate, ``none`` leaves them as they are."""
    p = np.asarray(p_values, dtype=float)
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction '{method}'; choose one of {', '.join(CORRECTIONS)}")
    if p.size == 0 or method == "none":
        return p.copy()
    m = p.size
    if method == "bonferroni":
        return np.minimum(p * m, 1.0)
    if method == "bh":
        return np.asarray(stats.false_discovery_control(p, method="bh"), dtype=float)
    order = np.argsort(p)
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted
