"""The paired bootstrap interval of an AUC difference: customers are resampled with
replacement and both models are judged on the same resample, so the correlation between the
two AUCs is kept (resampling each model on its own would ignore it and widen the interval).

A resample is a vector of multinomial counts over the rows, so the AUC of every resample comes
from one sort of each model's scores: per tied-score group, the weight of positives times the
weight of negatives ranked below (ties one half), summed. B resamples cost O(B n) arithmetic,
not B sorts.
"""

from __future__ import annotations

import numpy as np

from monitoring.rollout.stats.base import PairedDifference
from monitoring.rollout.stats.delong import midrank_aucs

# Resamples drawn per block: bounds the (block, n) weight matrices' memory.
_BLOCK = 256


def weighted_aucs(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The AUC of `scores` (n,) under each row of `weights` (B, n) of row counts."""
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    pos_w = weights[:, order] * positive[order]
    neg_w = weights[:, order] * ~positive[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first row of each tie group
    pos_g = np.add.reduceat(pos_w, starts, axis=1)
    neg_g = np.add.reduceat(neg_w, starts, axis=1)
    below = np.cumsum(neg_g, axis=1) - neg_g
    wins = (pos_g * (below + 0.5 * neg_g)).sum(axis=1)
    total = pos_g.sum(axis=1) * neg_g.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, wins / total, np.nan)


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
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(float)
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
