"""Drift detection: every feature's test, one multiple-testing correction, reports built once.

Method, per feature (why each choice is made is in the test modules' docstrings):

* numeric: two-sample Kolmogorov–Smirnov test; effect size = Wasserstein-1 distance divided by
  the reference standard deviation; PSI on reference decile bins is reported alongside;
* categorical: chi-squared test of homogeneity on the 2×K table of reference vs current counts
  (categories never seen in the reference are columns of their own and are also listed by
  share); effect size = Jensen–Shannon distance (base 2, in [0, 1]); PSI reported;
* missing values: two-proportion test of the missing rate, flagged when the rate moves by at
  least ``missing_rate`` (absolute) as well.

The distribution tests of one run form one family corrected for multiple testing (Bonferroni by
default); the missing-rate tests form a second family. A feature is *drifted* only when its
corrected p-value is below ``alpha`` AND its effect size reaches the threshold: with a million
rows every trivial change is significant, and with a hundred rows a big change may not be. Too
few rows gives ``status="insufficient_data"``.

The work is done in three passes over immutable values: run each test (:class:`_Evidence`),
correct the two families' p-values, then build each :class:`DriftReport` once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from churn.profile import CategoricalSummary, NumericSummary, ProfileError, ReferenceProfile
from monitoring.drift.results import (
    DriftInputError,
    DriftReport,
    DriftRun,
    EffectThresholds,
    Status,
)
from monitoring.drift.sources import (
    OUTCOME_COLUMN,
    PROBABILITY_COLUMN,
    ReferenceSource,
    check_columns,
    with_columns,
)
from monitoring.drift.stats import (
    CategoricalResult,
    ChiSquare,
    DriftTest,
    KolmogorovSmirnov,
    TestResult,
    correct_p_values,
    missing_rate_p_value,
)
from monitoring.performance.window import analyse_window
from monitoring.quality.live import DEFAULT_MIN_LABELLED, compute_live_quality

FrameOrProfile: TypeAlias = pd.DataFrame | ReferenceProfile | Mapping[str, Any]
Summary: TypeAlias = NumericSummary | CategoricalSummary

DEFAULT_ALPHA = 0.05
DEFAULT_MIN_ROWS = 100
NUMERIC_TEST = KolmogorovSmirnov()
CATEGORICAL_TEST = ChiSquare()


@dataclass(frozen=True)
class _Evidence:
    """One feature's test results before the multiple-testing correction decides them."""

    name: str
    kind: str
    test: DriftTest[Any]
    reference: Summary
    current: Summary
    result: TestResult | None  # None when one side has no non-missing value at all
    testable: bool  # enough rows on both sides to join the distribution family
    missing_p_value: float | None  # None when the missing rate cannot be tested


def as_profile(
    data: FrameOrProfile, numeric: Sequence[str], categorical: Sequence[str], label: str
) -> ReferenceProfile:
    """A DataFrame (every value kept), a profile dict or a :class:`ReferenceProfile`."""
    try:
        if isinstance(data, ReferenceProfile):
            profile = data
        elif isinstance(data, pd.DataFrame):
            profile = ReferenceProfile.from_frame(data, numeric, categorical, sample_size=None)
        elif isinstance(data, Mapping):
            profile = ReferenceProfile.from_dict(data)
        else:
            raise DriftInputError(
                f"{label} must be a DataFrame or a reference profile, not {type(data).__name__}"
            )
        profile.require(numeric, categorical)
    except ProfileError as exc:
        raise DriftInputError(f"{label}: {exc}") from exc
    return profile


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")


def _gather(
    name: str,
    test: DriftTest[Any],
    reference: Summary,
    current: Summary,
    min_rows: int,
    kind: str | None = None,
    test_missing: bool = True,
) -> _Evidence:
    """Run `test` when both sides have values; note whether each family may use it."""
    n_ref = reference.n + reference.n_missing
    n_cur = current.n + current.n_missing
    missing_p = None
    if test_missing and n_ref >= min_rows and n_cur >= min_rows:
        missing_p = missing_rate_p_value(n_ref, reference.n_missing, n_cur, current.n_missing)
    result = test.run(reference, current) if reference.n and current.n else None
    return _Evidence(
        name=name,
        kind=kind or test.kind,
        test=test,
        reference=reference,
        current=current,
        result=result,
        testable=reference.n >= min_rows and current.n >= min_rows,
        missing_p_value=missing_p,
    )


def _corrected(values: list[float | None], method: str) -> list[float]:
    """Correct the defined p-values as one family; undefined ones stay NaN."""
    present = [v for v in values if v is not None]
    adjusted = iter(correct_p_values(present, method).tolist())
    return [math.nan if v is None else float(next(adjusted)) for v in values]


def _build_report(
    evidence: _Evidence,
    p_corrected: float,
    missing_corrected: float,
    alpha: float,
    limits: EffectThresholds,
    min_rows: int,
) -> DriftReport:
    """The one place a report is made: verdict, status and notes from the evidence."""
    ref, cur, result = evidence.reference, evidence.current, evidence.result
    threshold = evidence.test.threshold(limits)
    nan = math.nan
    statistic, p_value, effect, psi = (
        (result.statistic, result.p_value, result.effect_size, result.psi)
        if result
        else (nan, nan, nan, nan)
    )
    notes: list[str] = []
    if not evidence.testable:
        notes.append(
            f"too few non-missing rows for a verdict (reference {ref.n}, current {cur.n}; "
            f"minimum {min_rows})"
        )
    if result is not None:
        notes.extend(evidence.test.notes(result))
    significant = evidence.testable and p_corrected < alpha
    distribution_drift = significant and effect >= threshold
    if significant and not distribution_drift:
        notes.append(
            f"significant but small: {evidence.test.effect_size_name} {effect:.3g} < {threshold:g}"
        )
    change = abs(cur.missing_rate - ref.missing_rate)
    missing_drift = bool(
        evidence.missing_p_value is not None
        and missing_corrected < alpha
        and change >= limits.missing_rate
    )
    if missing_drift:
        notes.append(f"missing rate moved from {ref.missing_rate:.1%} to {cur.missing_rate:.1%}")
    drifted = bool(distribution_drift or missing_drift)
    status: Status = "drift" if drifted else ("ok" if evidence.testable else "insufficient_data")
    return DriftReport(
        feature=evidence.name,
        kind=evidence.kind,
        test_used=evidence.test.test_used,
        statistic=statistic,
        p_value=p_value,
        p_value_corrected=p_corrected,
        effect_size=effect,
        effect_size_name=evidence.test.effect_size_name,
        effect_threshold=threshold,
        psi=psi,
        drifted=drifted,
        status=status,
        n_reference=ref.n,
        n_current=cur.n,
        missing_rate_reference=ref.missing_rate,
        missing_rate_current=cur.missing_rate,
        missing_p_value=nan if evidence.missing_p_value is None else evidence.missing_p_value,
        missing_p_value_corrected=missing_corrected,
        missing_rate_drifted=missing_drift,
        unseen_categories=dict(result.unseen) if isinstance(result, CategoricalResult) else {},
        reference_sample_size=int(ref.values.size) if isinstance(ref, NumericSummary) else None,
        notes=tuple(notes),
    )


def detect_feature_drift(
    reference: FrameOrProfile,
    current: FrameOrProfile,
    numeric_features: Sequence[str],
    categorical_features: Sequence[str],
    alpha: float = DEFAULT_ALPHA,
    *,
    correction: str = "bonferroni",
    min_rows: int = DEFAULT_MIN_ROWS,
    thresholds: EffectThresholds | None = None,
) -> list[DriftReport]:
    """One :class:`DriftReport` per feature, numeric first, in the order given.

    ``reference`` and ``current`` may each be a DataFrame or a reference profile. The
    distribution tests of all features with enough rows are one family for ``correction``, so
    with no real change the chance of any distribution alarm is at most ``alpha``; the
    missing-rate tests (features with any missing value) are a second family.
    """
    _check_alpha(alpha)
    limits = thresholds or EffectThresholds()
    ref = as_profile(reference, numeric_features, categorical_features, "reference")
    cur = as_profile(current, numeric_features, categorical_features, "current")
    evidence = [
        _gather(name, NUMERIC_TEST, ref.numeric[name], cur.numeric[name], min_rows)
        for name in numeric_features
    ] + [
        _gather(name, CATEGORICAL_TEST, ref.categorical[name], cur.categorical[name], min_rows)
        for name in categorical_features
    ]
    p_corrected = _corrected(
        [e.result.p_value if e.testable and e.result else None for e in evidence], correction
    )
    missing_corrected = _corrected([e.missing_p_value for e in evidence], correction)
    return [
        _build_report(e, p, m, alpha, limits, min_rows)
        for e, p, m in zip(evidence, p_corrected, missing_corrected, strict=True)
    ]


def detect_prediction_drift(
    reference_predictions: np.ndarray | Sequence[float] | NumericSummary,
    current_predictions: np.ndarray | Sequence[float] | NumericSummary,
    alpha: float = DEFAULT_ALPHA,
    *,
    min_rows: int = DEFAULT_MIN_ROWS,
    threshold: float = 0.1,
) -> DriftReport:
    """Drift of the predicted probabilities: KS test plus Wasserstein in reference SDs.

    A single test, so no correction; drift needs p < alpha and an effect ≥ ``threshold``.
    The missing-rate test does not apply (every served prediction has a probability).
    """
    _check_alpha(alpha)
    evidence = _gather(
        "prediction",
        NUMERIC_TEST,
        _as_numeric(reference_predictions),
        _as_numeric(current_predictions),
        min_rows,
        kind="prediction",
        test_missing=False,
    )
    p = evidence.result.p_value if evidence.testable and evidence.result else math.nan
    return _build_report(
        evidence, p, math.nan, alpha, EffectThresholds(wasserstein=threshold), min_rows
    )


def _as_numeric(values: np.ndarray | Sequence[float] | NumericSummary) -> NumericSummary:
    return values if isinstance(values, NumericSummary) else NumericSummary.from_values(values)


def run_drift_check(
    reference: ReferenceSource,
    current: pd.DataFrame,
    current_label: str,
    *,
    alpha: float = DEFAULT_ALPHA,
    correction: str = "bonferroni",
    min_rows: int = DEFAULT_MIN_ROWS,
    min_labelled: int = DEFAULT_MIN_LABELLED,
    thresholds: EffectThresholds | None = None,
) -> DriftRun:
    """Feature drift, prediction drift (when both sides have predictions), live quality (at
    the reference bundle's decision threshold, when the rows carry feedback) and, when the
    reference is a bundle and the rows carry its probabilities, performance estimated without
    labels with its segment table (monitoring.performance)."""
    features = [*reference.numeric, *reference.categorical]
    check_columns(current, features, current_label)
    frame = with_columns(current, features)
    reports = detect_feature_drift(
        reference.profile,
        frame,
        reference.numeric,
        reference.categorical,
        alpha,
        correction=correction,
        min_rows=min_rows,
        thresholds=thresholds,
    )
    prediction = None
    if reference.profile.predictions is not None and PROBABILITY_COLUMN in frame:
        prediction = detect_prediction_drift(
            reference.profile.predictions,
            frame[PROBABILITY_COLUMN].to_numpy(dtype=float),
            alpha,
            min_rows=min_rows,
            threshold=(thresholds or EffectThresholds()).wasserstein,
        )
    live = None
    if OUTCOME_COLUMN in frame:
        live = compute_live_quality(
            frame, threshold=reference.decision_threshold, min_labelled=min_labelled
        )
    performance = None
    if reference.metadata is not None and PROBABILITY_COLUMN in frame and len(frame):
        performance = analyse_window(frame, reference.metadata)
    return DriftRun(
        features=tuple(reports),
        prediction=prediction,
        live=live,
        reference=reference.profile,
        reference_label=reference.label,
        current_label=current_label,
        current_rows=len(frame),
        alpha=alpha,
        correction=correction,
        min_rows=min_rows,
        finished_at=datetime.now(UTC),
        prediction_column=PROBABILITY_COLUMN,
        performance=performance,
    )
