"""DeLong's test for the difference of two correlated AUCs (same customers, two models).

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of the AUCs from each
customer's "structural components" (the share of the other class a score beats). Sun & Xu
(2014, IEEE Signal Processing Letters 21(11)) obtain all of them from midranks, so the whole
test costs three rankings per model, O(n log n), instead of the n_pos x n_neg comparison.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata

from monitoring.rollout.stats.base import PairedDifference, z_value


def _structural_components(
    scores: np.ndarray, positive: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(aucs (k,), v01 (k, m), v10 (k, n)) for `scores` (k, N) and labels `positive` (N,).

    With Tx, Ty the midranks within positives / negatives and Tz over everyone:
    AUC = (sum Tz[pos] - m(m+1)/2) / (m n), V01 = (Tz[pos] - Tx) / n and
    V10 = 1 - (Tz[neg] - Ty) / m (Sun & Xu, eqs. 11-13).
    """
    pos, neg = scores[:, positive], scores[:, ~positive]
    m, n = pos.shape[1], neg.shape[1]
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v01 = (tz[:, :m] - tx) / n
    v10 = 1.0 - (tz[:, m:] - ty) / m
    return aucs, v01, v10


def midrank_aucs(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The AUC of each row of `scores` (k, N) against binary `labels` (ties count one half)."""
    positive = np.asarray(labels).astype(bool)
    aucs, _, _ = _structural_components(np.atleast_2d(np.asarray(scores, dtype=float)), positive)
    return aucs


def delong_covariance(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(aucs (k,), covariance (k, k)) of k models scored on the same labelled rows."""
    positive = np.asarray(labels).astype(bool)
    if positive.all() or not positive.any():
        raise ValueError("DeLong's test needs both classes among the labelled pairs")
    aucs, v01, v10 = _structural_components(np.asarray(scores, dtype=float), positive)
    m, n = v01.shape[1], v10.shape[1]
    if m < 2 or n < 2:
        raise ValueError("DeLong's test needs at least two rows of each class")
    covariance = np.atleast_2d(np.cov(v01)) / m + np.atleast_2d(np.cov(v10)) / n
    return aucs, covariance


def delong_auc_difference(
    champion: np.ndarray, challenger: np.ndarray, labels: np.ndarray, confidence: float = 0.95
) -> PairedDifference:
    """AUC(challenger) - AUC(champion) with DeLong's normal interval and two-sided p-value."""
    aucs, cov = delong_covariance(np.vstack([champion, challenger]), labels)
    difference = float(aucs[1] - aucs[0])
    variance = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(variance, 0.0))
    z = z_value(confidence)
    if se > 0:
        p_value = float(2 * norm.sf(abs(difference) / se))
    else:  # identical rankings: no difference and no uncertainty about it
        p_value = 1.0 if difference == 0 else 0.0
    return PairedDifference(
        metric="auc",
        method="delong",
        champion=float(aucs[0]),
        challenger=float(aucs[1]),
        difference=difference,
        lower=difference - z * se,
        upper=difference + z * se,
        standard_error=se,
        p_value=p_value,
        confidence=confidence,
        pairs=len(labels),
    )
