"""The paired bootstrap interval of an AUC difference: customers are resampled with
replacement and both models are judged on the same resample, so the correlation between the
two AUCs is kept (resampling each model on its own would ignore it and widen the interval).

A resample is a vector of counts over the rows, so the AUC of every resample comes from one
sort of each model's scores (see ``weighted_aucs``): B resamples cost O(B n) arithmetic, not
B sorts.
"""

from __future__ import annotations

import numpy as np

from monitoring.rollout.stats.base import PairedDifference
from monitoring.rollout.stats.delong import midrank_aucs

# Resamples drawn per block: bounds the (block, n) weight matrices' memory.
_BLOCK = 256


def weighted_aucs(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The AUC of `scores` (n,) under each row of `weights` (B, n) of row counts.

    Negatives are sorted once; each positive's position among them (searchsorted, left and
    right for ties) is the same in every resample, so a resample's AUC is the positives'
    weights times the cumulative negative weight below them (ties one half), summed.
    """
    pos_idx = np.flatnonzero(positive)
    neg_idx = np.flatnonzero(~positive)
    order = np.argsort(scores[neg_idx], kind="mergesort")
    neg_sorted = scores[neg_idx][order]
    below = np.searchsorted(neg_sorted, scores[pos_idx], side="left")
    upto = np.searchsorted(neg_sorted, scores[pos_idx], side="right")
    neg_w = weights[:, neg_idx[order]]
    cumulative = np.zeros((weights.shape[0], len(neg_idx) + 1))
    np.cumsum(neg_w, axis=1, out=cumulative[:, 1:])
    lower, upper = cumulative[:, below], cumulative[:, upto]
    pos_w = weights[:, pos_idx]
    wins = (pos_w * (lower + upper)).sum(axis=1) * 0.5  # below + half the ties
    total = pos_w.sum(axis=1) * cumulative[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, wins / total, np.nan)


def resample_counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """`size` bootstrap resamples of n rows as counts per row, (size, n)."""
    drawn = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
    return np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n).astype(float)


def paired_bootstrap_auc(
    champion: np.ndarray,
    challenger: np.ndarray,
    labels: np.ndarray,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> PairedDifference:
    """AUC(challenger) - AUC(champion) with the percentile interval of `resamples` paired
    resamples; the p-value is the two-sided share of resampled differences across zero."""
    positive = np.asarray(labels).astype(bool)
    if positive.all() or not positive.any():
        raise ValueError("the bootstrap needs both classes among the labelled pairs")
    a = np.asarray(champion, dtype=float)
    b = np.asarray(challenger, dtype=float)
    n = len(positive)
    rng = np.random.default_rng(seed)
    diffs: list[np.ndarray] = []
    for start in range(0, resamples, _BLOCK):
        size = min(_BLOCK, resamples - start)
        weights = resample_counts(rng, n, size)
        diffs.append(weighted_aucs(b, positive, weights) - weighted_aucs(a, positive, weights))
    d = np.concatenate(diffs)
    d = d[np.isfinite(d)]  # a resample that drew one class only has no AUC
    aucs = midrank_aucs(np.vstack([a, b]), positive)
    difference = float(aucs[1] - aucs[0])
    alpha = 1.0 - confidence
    lower, upper = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    p_value = float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))
    return PairedDifference(
        metric="auc",
        method="bootstrap",
        champion=float(aucs[0]),
        challenger=float(aucs[1]),
        difference=difference,
        lower=float(lower),
        upper=float(upper),
        standard_error=float(np.std(d, ddof=1)),
        p_value=p_value,
        confidence=confidence,
        pairs=n,
    )
