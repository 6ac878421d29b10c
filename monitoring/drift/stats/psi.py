"""Population stability index: reported beside every test, never a verdict on its own."""

from __future__ import annotations

import numpy as np

PSI_EPSILON = 1e-4  # floor on a bin's share so an empty bin gives a finite PSI


def population_stability_index(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """PSI = Σ (c − r)·ln(c / r) over bins, shares floored at ``PSI_EPSILON`` (empty bins)."""
    r = np.maximum(reference_counts / max(reference_counts.sum(), 1), PSI_EPSILON)
    c = np.maximum(current_counts / max(current_counts.sum(), 1), PSI_EPSILON)
    return float(np.sum((c - r) * np.log(c / r)))
