"""Per-segment performance and the calibration-in-the-large test that names a segment the model
under- or over-predicts.

Segments come from the validated `monitoring.segments` config: a categorical feature splits
by the schema's categories (anything else is `other`, so metric labels stay bounded), a
numeric one by the configured band edges. Per segment: volume, mean served probability,
estimated churn rate (mean calibrated probability), realised churn rate where labelled, and
estimated / realised AUC where there are enough rows.

The test compares the churners observed in a segment's labelled rows with the count the
calibrated probabilities predict. A model is never perfectly calibrated in every segment (a
forest under-predicts a rare group a little), so when the bundle carries its validation
predictions the test asks whether the segment's gap (observed minus predicted churn rate) has
*changed* since validation: a two-sample z-test on the two gaps, each with its Poisson-binomial
variance. Without that reference it is an exact binomial test at the segment's mean
probability (the true count is Poisson-binomial, whose variance never exceeds the binomial's,
so the test is conservative). Segments overlap (a fibre customer is also month-to-month), so
one shifted group would make every segment that contains it look off. Segments are therefore judged
step-down, most significant first, each on the labelled rows that no flagged segment has
already explained, at the Bonferroni level across all tested segments: the first step is the
Bonferroni test, so false alarms stay at or below alpha when nothing changed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest, norm

from monitoring.performance.estimate import _Ranking
from monitoring.performance.results import SegmentReport, SegmentResult, Verdict

OTHER = "other"


@dataclass(frozen=True)
class SegmentSpec:
    """One segmentation: a categorical feature by its categories, or a numeric one by bands."""

    feature: str
    categories: tuple[str, ...] = ()
    edges: tuple[float, ...] = ()

    def labels(self) -> tuple[str, ...]:
        if self.edges:
            return (*_band_labels(self.edges), OTHER)
        return (*self.categories, OTHER)

    def codes(self, values: pd.Series) -> np.ndarray:
        """Each row's position in `labels()` (bounded: the known labels, then `other`)."""
        other = len(self.labels()) - 1
        if self.edges:
            x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
            index = np.searchsorted(np.asarray(self.edges), x, side="right")
            return np.where(np.isfinite(x), index, other)
        # factorise once, then map the few distinct values (a missing value is `other`)
        inverse, distinct = pd.factorize(values, use_na_sentinel=True)
        position = {c: i for i, c in enumerate(self.categories)}
        lookup = np.asarray([position.get(v, other) for v in distinct] + [other], dtype=int)
        return lookup[inverse]


def _band_labels(edges: tuple[float, ...]) -> tuple[str, ...]:
    def f(v: float) -> str:
        return f"{v:g}"

    inner = tuple(f"{f(a)}-{f(b)}" for a, b in itertools.pairwise(edges))
    return (f"<{f(edges[0])}", *inner, f">={f(edges[-1])}")


def _auc(
    ranking: _Ranking, scores: np.ndarray, mask: np.ndarray, positive: np.ndarray
) -> float | None:
    """AUC of the rows in `mask`, using the window's one sort."""
    sub, rows = ranking.subset(scores, mask)
    value = float(sub.auc(positive[rows])[0])
    return value if np.isfinite(value) else None


def _binomial_p(churners: int, rows: int, rate: float) -> float:
    rate = min(max(rate, 1e-9), 1 - 1e-9)
    return float(binomtest(churners, rows, rate, alternative="two-sided").pvalue)


@dataclass(frozen=True)
class Reference:
    """Validation rows at training time: features, calibrated probability and label."""

    frame: pd.DataFrame
    calibrated: np.ndarray
    labels: np.ndarray


def _gap_test(
    y: np.ndarray,
    q: np.ndarray,
    rows: np.ndarray,
    ref: Reference | None,
    ref_rows: np.ndarray | None,
) -> tuple[float, bool]:
    """(p-value, under-predicted?) for the segment rows `rows` of the window."""
    n = int(rows.sum())
    churners = float(y[rows].sum())
    expected = float(q[rows].sum())
    if ref is None or ref_rows is None or int(ref_rows.sum()) < 30:
        return _binomial_p(int(churners), n, expected / n), churners > expected
    m = int(ref_rows.sum())
    gap = (churners - expected) / n
    ref_q = ref.calibrated[ref_rows]
    ref_gap = float(ref.labels[ref_rows].sum() - ref_q.sum()) / m
    variance = (
        float(np.sum(q[rows] * (1 - q[rows]))) / n**2 + float(np.sum(ref_q * (1 - ref_q))) / m**2
    )
    z = (gap - ref_gap) / np.sqrt(max(variance, 1e-12))
    return float(2 * norm.sf(abs(z))), z > 0


def analyse_segments(
    frame: pd.DataFrame,
    specs: list[SegmentSpec],
    probabilities: np.ndarray,
    calibrated: np.ndarray,
    labels: np.ndarray | None = None,
    alpha: float = 0.05,
    min_rows: int = 100,
    reference: Reference | None = None,
) -> SegmentReport:
    """Per-segment figures and verdicts for one window (rows of `frame` aligned with the
    probability arrays; `labels` 1.0/0.0 with NaN where not yet known), against the
    validation `reference` when there is one."""
    p = np.asarray(probabilities, dtype=float)
    q = np.asarray(calibrated, dtype=float)
    y = np.full(p.size, np.nan) if labels is None else np.asarray(labels, dtype=float)
    known = np.isfinite(y)
    ranking = _Ranking(p)
    masks: list[tuple[str, str, np.ndarray]] = []
    ref_masks: dict[tuple[str, str], np.ndarray] = {}
    for spec in specs:
        codes = spec.codes(frame[spec.feature])
        ref_codes = spec.codes(reference.frame[spec.feature]) if reference else None
        for i, value in enumerate(spec.labels()):
            mask = codes == i
            if mask.any():
                masks.append((spec.feature, value, mask))
                if ref_codes is not None:
                    ref_masks[(spec.feature, value)] = ref_codes == i

    base: dict[tuple[str, str], dict[str, Any]] = {}
    testable: list[tuple[str, str]] = []
    for feature, value, mask in masks:
        lab = mask & known
        n_lab = int(lab.sum())
        info: dict[str, Any] = {
            "rows": int(mask.sum()),
            "labelled": n_lab,
            "mean_probability": float(p[mask].mean()),
            "estimated_churn_rate": float(q[mask].mean()),
        }
        if mask.sum() >= min_rows:
            info["estimated_auc"] = _auc(ranking, p, mask, q)
        if n_lab:
            info["realised_churn_rate"] = float(y[lab].mean())
            info["expected_churn_rate_labelled"] = float(q[lab].mean())
        if n_lab >= min_rows:
            info["realised_auc"] = _auc(ranking, p, lab, y)
            testable.append((feature, value))
        base[(feature, value)] = info

    verdicts, p_values = _step_down(
        {key: mask for feature, value, mask in masks if (key := (feature, value)) in testable},
        y,
        q,
        known,
        alpha,
        min_rows,
        reference,
        ref_masks,
    )
    results = tuple(
        SegmentResult(
            feature=feature,
            value=value,
            p_value=p_values.get((feature, value)),
            verdict=verdicts.get((feature, value), "insufficient_data"),
            **base[(feature, value)],
        )
        for feature, value, _ in masks
    )
    return SegmentReport(alpha=alpha, tested=len(testable), segments=results)


def _step_down(
    masks: dict[tuple[str, str], np.ndarray],
    y: np.ndarray,
    q: np.ndarray,
    known: np.ndarray,
    alpha: float,
    min_rows: int,
    reference: Reference | None,
    ref_masks: dict[tuple[str, str], np.ndarray],
) -> tuple[dict[tuple[str, str], Verdict], dict[tuple[str, str], float]]:
    """Flag the most significant segment while it passes alpha / m, each time testing the
    rest on the labelled rows (window and reference alike) no flagged segment explains."""
    level = alpha / max(len(masks), 1)
    unexplained = known.copy()
    ref_unexplained = np.ones(len(reference.labels), dtype=bool) if reference else None
    verdicts: dict[tuple[str, str], Verdict] = {}
    p_values: dict[tuple[str, str], float] = {}
    pending = dict(masks)
    while pending:
        tests: dict[tuple[str, str], tuple[float, bool]] = {}
        for key, mask in pending.items():
            rows = mask & unexplained
            n = int(rows.sum())
            if n < min_rows:
                continue
            ref_rows = (
                ref_masks[key] & ref_unexplained
                if ref_unexplained is not None and key in ref_masks
                else None
            )
            tests[key] = _gap_test(y, q, rows, reference, ref_rows)
        for key, (pv, _) in tests.items():
            p_values[key] = pv
        if not tests:
            break
        best = min(tests, key=lambda k: tests[k][0])
        pv, under = tests[best]
        if pv >= level:
            break
        verdicts[best] = "under_predicted" if under else "over_predicted"
        if ref_unexplained is not None and best in ref_masks:
            ref_unexplained &= ~ref_masks[best]
        unexplained &= ~pending.pop(best)
    for key in masks:
        verdicts.setdefault(key, "ok" if key in p_values else "insufficient_data")
    return verdicts, p_values
