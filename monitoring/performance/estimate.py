"""Performance estimated without labels (confidence-based, as NannyML's CBPE), and reconciled.

Each served probability, once calibrated (churn.calibration), is the chance that the customer
churns. The expected confusion matrix at the decision threshold is then a sum of those chances
(a predicted churner is a true positive with probability q, a false positive with 1 - q), and
the expected ROC AUC is the chance that a churner outranks a non-churner when labels are drawn
from q. None of this needs a label.

The band around each estimate is where the *realised* metric falls, with the stated
probability, if the calibration still holds: labels are independent draws from q, so the
confusion-matrix metrics get their spread from the delta method on sums of Bernoulli
variables, and the AUC's spread is simulated (labels drawn from q, the AUC recomputed).
When labels arrive, a realised value outside its band means the relationship between
features and churn changed (concept shift), which no estimate from inputs can see; the window
is flagged.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from monitoring.performance.results import MetricEstimate, PerformanceEstimate

METRICS = ("roc_auc", "precision", "recall", "f1", "accuracy", "churn_rate")
DEFAULT_BAND = 0.99


class _Ranking:
    """Scores sorted once, grouped by ties, for AUCs of many label vectors in O(n) each."""

    def __init__(self, scores: np.ndarray, order: np.ndarray | None = None) -> None:
        self.order = np.argsort(scores, kind="stable") if order is None else order
        ranked = scores[self.order]
        self.starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])

    def subset(self, scores: np.ndarray, mask: np.ndarray) -> tuple[_Ranking, np.ndarray]:
        """The ranking of the rows in `mask`, without sorting again, and their indices."""
        rows = self.order[mask[self.order]]
        return _Ranking(scores[rows], np.arange(rows.size)), rows

    def auc(self, positive: np.ndarray) -> np.ndarray:
        """AUC for each row of `positive` (weights in [0, 1]; shape (n,) or (draws, n)).

        With 0/1 labels this is the Mann-Whitney AUC, ties counted half; with probabilities
        it is the expected one, pairs of a customer with itself left out."""
        w = np.atleast_2d(np.asarray(positive, dtype=float))[:, self.order]
        neg = 1.0 - w
        group_pos = np.add.reduceat(w, self.starts, axis=1)
        group_neg = np.add.reduceat(neg, self.starts, axis=1)
        self_pairs = np.add.reduceat(w * neg, self.starts, axis=1)
        below = np.cumsum(group_neg, axis=1) - group_neg
        wins = np.sum(group_pos * below + 0.5 * (group_pos * group_neg - self_pairs), axis=1)
        pairs = w.sum(axis=1) * neg.sum(axis=1) - (w * neg).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pairs > 0, wins / pairs, np.nan)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


def _confusion(
    positive: np.ndarray, predicted: np.ndarray
) -> tuple[dict[str, float], dict[str, float]]:
    """Precision, recall, F1, accuracy and churn rate for labels (or, with label
    probabilities, the expected values: ratios of expected counts, as CBPE), and each one's
    standard deviation when labels are drawn from `positive` (delta method on the two
    independent sums of churners among predicted churners, a, and among the others, b)."""
    w = np.asarray(positive, dtype=float)
    n = float(w.size)
    n_pos = float(predicted.sum())
    a = float(w[predicted].sum())
    b = float(w[~predicted].sum())
    var = w * (1.0 - w)
    va, vb = float(var[predicted].sum()), float(var[~predicted].sum())
    d = n_pos + a + b  # 2 tp + fp + fn
    values = {
        "precision": _ratio(a, n_pos),
        "recall": _ratio(a, a + b),
        "f1": _ratio(2 * a, d),
        "accuracy": (a + (n - n_pos - b)) / n,
        "churn_rate": (a + b) / n,
    }
    sds = {
        "precision": _ratio(np.sqrt(va), n_pos),
        "recall": _ratio(np.sqrt(b * b * va + a * a * vb), (a + b) ** 2),
        "f1": _ratio(2 * np.sqrt((n_pos + b) ** 2 * va + a * a * vb), d * d),
        "accuracy": np.sqrt(va + vb) / n,
        "churn_rate": np.sqrt(va + vb) / n,
    }
    return values, sds


# Simulated label sets for the AUC's band. Beyond AUC_SAMPLE rows the spread is simulated on
# a uniform sample and scaled by sqrt(sample / rows): the AUC's spread shrinks as 1/sqrt(n).
AUC_DRAWS = 100
AUC_SAMPLE = 10_000


def _auc_sd(probabilities: np.ndarray, calibrated: np.ndarray, rng: np.random.Generator) -> float:
    n = calibrated.size
    rows = np.sort(rng.choice(n, AUC_SAMPLE, replace=False)) if n > AUC_SAMPLE else None
    p = probabilities if rows is None else probabilities[rows]
    q = calibrated if rows is None else calibrated[rows]
    draws = rng.random((AUC_DRAWS, q.size)) < q
    sims = _Ranking(p).auc(draws)
    sims = sims[np.isfinite(sims)]
    if sims.size < 2:
        return float("nan")
    return float(np.std(sims, ddof=1)) * (np.sqrt(q.size / n) if rows is not None else 1.0)


def _estimate(
    probabilities: np.ndarray,
    calibrated: np.ndarray,
    threshold: float,
    band: float,
    realised_labels: np.ndarray | None,
    seed: int,
    ranking: _Ranking | None = None,
) -> tuple[MetricEstimate, ...]:
    ranking = ranking or _Ranking(probabilities)
    predicted = probabilities >= threshold
    expected, sds = _confusion(calibrated, predicted)
    expected["roc_auc"] = float(ranking.auc(calibrated)[0])
    sds["roc_auc"] = _auc_sd(probabilities, calibrated, np.random.default_rng(seed))
    realised: dict[str, float] = {}
    if realised_labels is not None:
        realised, _ = _confusion(realised_labels, predicted)
        realised["roc_auc"] = float(ranking.auc(realised_labels)[0])
    z = float(norm.ppf(0.5 + band / 2))
    out = []
    for name in METRICS:
        point, spread = expected[name], z * sds[name]
        value = realised.get(name)
        value = value if value is not None and np.isfinite(value) else None
        out.append(MetricEstimate(name, point, point - spread, point + spread, value))
    return tuple(out)


def estimate_performance(
    probabilities: np.ndarray,
    calibrated: np.ndarray,
    threshold: float,
    labels: np.ndarray | None = None,
    band: float = DEFAULT_BAND,
    seed: int = 0,
) -> PerformanceEstimate:
    """Estimated metrics of a window from the served probabilities (decisions at `threshold`)
    and their calibrated values (label probabilities); with `labels` (1.0/0.0, NaN where not
    yet known) the labelled rows are reconciled: the same estimate on those rows beside the
    realised metrics, flagged where the realised value leaves its band."""
    p = np.asarray(probabilities, dtype=float)
    q = np.asarray(calibrated, dtype=float)
    if p.shape != q.shape:
        raise ValueError("probabilities and calibrated probabilities differ in length")
    if not 0.0 < band < 1.0:
        raise ValueError(f"band must lie in (0, 1), got {band}")
    if p.size == 0:
        return PerformanceEstimate(0, 0, threshold, band, ())
    ranking = _Ranking(p)
    metrics = _estimate(p, q, threshold, band, None, seed, ranking)
    reconciled: tuple[MetricEstimate, ...] = ()
    labelled = 0
    if labels is not None:
        y = np.asarray(labels, dtype=float)
        known = np.isfinite(y)
        labelled = int(known.sum())
        if labelled:
            sub, rows = ranking.subset(p, known)
            reconciled = _estimate(p[rows], q[rows], threshold, band, y[rows], seed + 1, sub)
    return PerformanceEstimate(p.size, labelled, threshold, band, metrics, reconciled)
