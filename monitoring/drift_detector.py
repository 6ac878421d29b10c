"""Statistical drift detection between a reference (training) data set and current traffic.

Importable (pure functions returning :class:`DriftReport`) and a CLI::

    python -m monitoring.drift_detector --reference artifacts/metadata.json --since 24h \
        --html reports/drift.html --json reports/drift.json --pushgateway localhost:9091

Method, per feature (why each choice is made is in the docstrings below):

* numeric: two-sample Kolmogorov–Smirnov test; effect size = Wasserstein-1 distance divided by
  the reference standard deviation ("a shift of this many reference SDs"); PSI on reference
  decile bins is reported alongside;
* categorical: chi-squared test of homogeneity on the 2×K table of reference vs current counts
  (categories never seen in the reference are columns of their own and are also listed by
  share); effect size = Jensen–Shannon distance (base 2, in [0, 1]); PSI reported;
* missing values: two-proportion test of the missing rate, flagged when the rate moves by at
  least ``missing_rate`` (absolute) as well.

The distribution tests of one run form one family corrected for multiple testing (Bonferroni by
default); the missing-rate tests form a second family.
A feature is *drifted* only when its corrected p-value is below ``alpha`` AND its effect size
reaches the threshold: with a million rows every trivial change is significant, and with a
hundred rows a big change may not be. Too few rows gives ``status="insufficient_data"``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

from churn.profile import (
    CategoricalSummary,
    NumericSummary,
    ProfileError,
    ReferenceProfile,
    bin_counts,
)
from monitoring.live_quality import DEFAULT_MIN_LABELLED, LiveQuality, compute_live_quality

Correction = Literal["bonferroni", "holm", "bh", "none"]
CORRECTIONS: tuple[str, ...] = ("bonferroni", "holm", "bh", "none")
Status = Literal["ok", "drift", "insufficient_data"]
FrameOrProfile: TypeAlias = pd.DataFrame | ReferenceProfile | Mapping[str, Any]

PSI_EPSILON = 1e-4  # floor on a bin's share so an empty bin gives a finite PSI
# Columns that are never features when the schema has to be inferred from a CSV.
NON_FEATURE_COLUMNS = frozenset(
    {
        "churned",
        "customer_id",
        "prediction_id",
        "created_at",
        "model_version",
        "probability",
        "risk_tier",
        "outcome",
    }
)
EXIT_OK, EXIT_DRIFT, EXIT_ERROR = 0, 1, 2
_EXACT_KS_MAX_N = 10_000  # scipy's own limit for the exact two-sample distribution
_KSTWO_MAX_EN = 20_000  # above this kstwo.sf is slow and the asymptotic form is exact enough


class DriftInputError(ValueError):
    """The inputs cannot be compared; the message names the file or column to fix."""


@dataclass(frozen=True)
class EffectThresholds:
    """Minimum effect sizes for a significant test to count as drift.

    Defaults are calibrated on synthetic data (tests/test_drift_stats.py): a 0.3 SD mean shift
    (normalised Wasserstein ≈ 0.3) or a 10-point move in a category share (JS ≈ 0.07–0.1) at
    1,000 rows is caught ≥ 9 times in 10, while a 0.01 SD shift on a million rows (≈ 0.01)
    is not an alarm. ``wasserstein`` 0.1 means "the distribution moved by a tenth of a
    reference SD"; ``js`` 0.05 is about a new category taking 1 % of traffic.
    """

    wasserstein: float = 0.1
    js: float = 0.05
    missing_rate: float = 0.05

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"effect threshold {name} must be a finite number >= 0")


@dataclass
class DriftReport:
    """Verdict and evidence for one feature (or for the predictions).

    ``n_reference``/``n_current`` count the non-missing rows each side describes; for numeric
    features ``reference_sample_size`` says how many reference values the KS test and the
    Wasserstein distance used (a profile keeps a sample; PSI and missing rates use all rows).
    ``p_value_corrected`` is the p-value after the run's multiple-testing correction; ``drifted``
    requires it to be below alpha and ``effect_size`` to reach ``effect_threshold``.
    """

    feature: str
    kind: str
    test_used: str
    statistic: float
    p_value: float
    p_value_corrected: float
    effect_size: float
    effect_size_name: str
    effect_threshold: float
    psi: float
    drifted: bool
    status: Status
    n_reference: int
    n_current: int
    missing_rate_reference: float
    missing_rate_current: float
    missing_p_value: float = float("nan")
    missing_p_value_corrected: float = float("nan")
    missing_rate_drifted: bool = False
    unseen_categories: dict[str, float] = field(default_factory=dict)
    reference_sample_size: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: NaN and infinities become null (JSON has neither)."""
        return {k: _json_safe(v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class _NumericStats:
    statistic: float
    p_value: float
    wasserstein: float
    psi: float


def ks_and_wasserstein(reference: np.ndarray, current: np.ndarray) -> tuple[float, float, float]:
    """KS statistic, its two-sided p-value and the raw Wasserstein-1 distance, in one pass.

    Both come from the two empirical CDFs on the merged support, so each array is sorted once
    (a million rows take a fraction of a second; scipy's wasserstein_distance would argsort
    the concatenation again). The p-value is exact (scipy) up to 10,000 rows per side, then
    Smirnov's distribution, then for very large samples the Kolmogorov limit with Stephens'
    correction (relative error below 0.1 %, and kstwo.sf takes most of a second there).
    """
    ref = np.sort(reference)
    cur = np.sort(current)
    support = np.sort(np.concatenate([ref, cur]), kind="stable")  # merges two sorted runs
    gap = np.abs(
        np.searchsorted(ref, support, side="right") / ref.size
        - np.searchsorted(cur, support, side="right") / cur.size
    )
    d = float(gap.max())
    wasserstein = float(np.sum(gap[:-1] * np.diff(support)))
    n, m = sorted((ref.size, cur.size), reverse=True)
    if n <= _EXACT_KS_MAX_N:
        with warnings.catch_warnings():  # scipy falls back to "asymp" itself, and says so
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(stats.ks_2samp(ref, cur).pvalue)
    else:
        en = n * m / (n + m)
        if en <= _KSTWO_MAX_EN:
            p = float(stats.kstwo.sf(d, round(en)))
        else:
            root = math.sqrt(en)
            p = float(stats.kstwobign.sf((root + 0.12 + 0.11 / root) * d))
    return d, min(max(p, 0.0), 1.0), wasserstein


def population_stability_index(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """PSI = Σ (c − r)·ln(c / r) over bins, shares floored at ``PSI_EPSILON`` (empty bins)."""
    r = np.maximum(reference_counts / max(reference_counts.sum(), 1), PSI_EPSILON)
    c = np.maximum(current_counts / max(current_counts.sum(), 1), PSI_EPSILON)
    return float(np.sum((c - r) * np.log(c / r)))


def numeric_statistics(reference: NumericSummary, current: NumericSummary) -> _NumericStats:
    """KS test, Wasserstein distance in reference SDs and PSI on the reference's decile bins.

    The Wasserstein distance is divided by the reference standard deviation (not the IQR):
    for a pure location shift it then equals the shift in SDs, which is what the threshold
    speaks; a constant reference (SD 0) makes any movement infinitely large.
    """
    d, p, w = ks_and_wasserstein(reference.values, current.values)
    scale = reference.std
    w_norm = w / scale if scale > 0 else (0.0 if w == 0 else math.inf)
    psi = population_stability_index(
        reference.bin_counts.astype(float), bin_counts(current.values, reference.edges)
    )
    return _NumericStats(statistic=d, p_value=p, wasserstein=w_norm, psi=psi)


@dataclass(frozen=True)
class _CategoricalStats:
    statistic: float
    p_value: float
    js: float
    psi: float
    unseen: dict[str, float]
    sparse: bool


def categorical_statistics(
    reference: CategoricalSummary, current: CategoricalSummary
) -> _CategoricalStats:
    """Chi-squared homogeneity test on the 2×K table of counts, JS distance and PSI.

    Homogeneity (``chi2_contingency``), not goodness of fit: both rows are samples, so unequal
    totals are handled and the reference's own sampling noise is accounted for. Each category
    unseen in the reference is a column of its own (reference count 0); a category present
    in neither side is dropped (its expected count would be 0).
    """
    categories = list(reference.counts)
    unseen_names = [c for c in current.counts if c not in reference.counts]
    categories += unseen_names
    table = np.array(
        [
            [reference.counts.get(c, 0) for c in categories],
            [current.counts.get(c, 0) for c in categories],
        ],
        dtype=float,
    )
    table = table[:, table.sum(axis=0) > 0]
    cur_total = max(current.n, 1)
    unseen = {c: current.counts[c] / cur_total for c in unseen_names}
    if table.shape[1] < 2:  # one category on both sides: nothing can differ
        return _CategoricalStats(0.0, 1.0, 0.0, 0.0, unseen, sparse=False)
    result = stats.chi2_contingency(table, correction=False)
    shares = table / table.sum(axis=1, keepdims=True)
    js = float(jensenshannon(shares[0], shares[1], base=2))
    return _CategoricalStats(
        statistic=float(result.statistic),
        p_value=float(result.pvalue),
        js=js if math.isfinite(js) else 0.0,
        psi=population_stability_index(table[0], table[1]),
        unseen=unseen,
        sparse=bool((result.expected_freq < 5).any()),
    )


def missing_rate_p_value(
    n_ref: int, missing_ref: int, n_cur: int, missing_cur: int
) -> float | None:
    """Two-sided two-proportion z-test of the missing rate; None when nothing is ever missing.

    With no missing value on either side the test cannot reject whatever happens, so it is
    left out of the multiple-testing family instead of diluting it.
    """
    total_missing = missing_ref + missing_cur
    if total_missing == 0 or n_ref == 0 or n_cur == 0:
        return None
    pooled = total_missing / (n_ref + n_cur)
    if pooled >= 1.0:
        return 1.0
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_ref + 1 / n_cur))
    z = (missing_cur / n_cur - missing_ref / n_ref) / se
    return float(2 * stats.norm.sf(abs(z)))


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


# --------------------------------------------------------------------------- public API


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


@dataclass
class _Pending:
    """A report before the multiple-testing correction decides it."""

    report: DriftReport
    testable: bool
    missing_testable: bool


def detect_feature_drift(
    reference: FrameOrProfile,
    current: FrameOrProfile,
    numeric_features: Sequence[str],
    categorical_features: Sequence[str],
    alpha: float = 0.05,
    *,
    correction: str = "bonferroni",
    min_rows: int = 100,
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
    pending = [
        _numeric_pending(name, ref.numeric[name], cur.numeric[name], min_rows, limits)
        for name in numeric_features
    ] + [
        _categorical_pending(name, ref.categorical[name], cur.categorical[name], min_rows, limits)
        for name in categorical_features
    ]
    _apply_correction(pending, correction)
    return [_decide(item, alpha, limits) for item in pending]


def detect_prediction_drift(
    reference_predictions: np.ndarray | Sequence[float] | NumericSummary,
    current_predictions: np.ndarray | Sequence[float] | NumericSummary,
    alpha: float = 0.05,
    *,
    min_rows: int = 100,
    threshold: float = 0.1,
) -> DriftReport:
    """Drift of the predicted probabilities: KS test plus Wasserstein in reference SDs.

    A single test, so no correction; drift needs p < alpha and an effect ≥ ``threshold``.
    """
    _check_alpha(alpha)
    ref = _as_numeric(reference_predictions)
    cur = _as_numeric(current_predictions)
    item = _numeric_pending(
        "prediction", ref, cur, min_rows, EffectThresholds(wasserstein=threshold)
    )
    item.report.kind = "prediction"
    item.report.p_value_corrected = item.report.p_value
    item.missing_testable = False
    return _decide(item, alpha, EffectThresholds(wasserstein=threshold))


def _as_numeric(values: np.ndarray | Sequence[float] | NumericSummary) -> NumericSummary:
    return values if isinstance(values, NumericSummary) else NumericSummary.from_values(values)


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")


def _base_report(
    name: str,
    kind: str,
    test: str,
    effect_name: str,
    threshold: float,
    ref: NumericSummary | CategoricalSummary,
    cur: NumericSummary | CategoricalSummary,
) -> DriftReport:
    nan = float("nan")
    return DriftReport(
        feature=name,
        kind=kind,
        test_used=test,
        statistic=nan,
        p_value=nan,
        p_value_corrected=nan,
        effect_size=nan,
        effect_size_name=effect_name,
        effect_threshold=threshold,
        psi=nan,
        drifted=False,
        status="ok",
        n_reference=ref.n,
        n_current=cur.n,
        missing_rate_reference=ref.missing_rate,
        missing_rate_current=cur.missing_rate,
    )


def _missing_check(
    report: DriftReport,
    ref: NumericSummary | CategoricalSummary,
    cur: NumericSummary | CategoricalSummary,
    min_rows: int,
) -> bool:
    """Fill the missing-rate p-value; True when it joins the correction family."""
    n_ref, n_cur = ref.n + ref.n_missing, cur.n + cur.n_missing
    if n_ref < min_rows or n_cur < min_rows:
        return False
    p = missing_rate_p_value(n_ref, ref.n_missing, n_cur, cur.n_missing)
    if p is None:
        return False
    report.missing_p_value = p
    return True


def _enough_rows(report: DriftReport, min_rows: int) -> bool:
    if report.n_reference >= min_rows and report.n_current >= min_rows:
        return True
    report.status = "insufficient_data"
    report.notes.append(
        f"too few non-missing rows for a verdict (reference {report.n_reference}, "
        f"current {report.n_current}; minimum {min_rows})"
    )
    return False


def _numeric_pending(
    name: str,
    ref: NumericSummary,
    cur: NumericSummary,
    min_rows: int,
    limits: EffectThresholds,
) -> _Pending:
    report = _base_report(
        name, "numeric", "ks_2samp", "wasserstein_sd", limits.wasserstein, ref, cur
    )
    missing_testable = _missing_check(report, ref, cur, min_rows)
    testable = _enough_rows(report, min_rows)
    if ref.n and cur.n:
        result = numeric_statistics(ref, cur)
        report.statistic, report.p_value = result.statistic, result.p_value
        report.effect_size, report.psi = result.wasserstein, result.psi
    report.reference_sample_size = int(ref.values.size)
    return _Pending(report, testable, missing_testable)


def _categorical_pending(
    name: str,
    ref: CategoricalSummary,
    cur: CategoricalSummary,
    min_rows: int,
    limits: EffectThresholds,
) -> _Pending:
    report = _base_report(
        name, "categorical", "chi2_contingency", "jensen_shannon", limits.js, ref, cur
    )
    missing_testable = _missing_check(report, ref, cur, min_rows)
    testable = _enough_rows(report, min_rows)
    if ref.n and cur.n:
        result = categorical_statistics(ref, cur)
        report.statistic, report.p_value = result.statistic, result.p_value
        report.effect_size, report.psi = result.js, result.psi
        report.unseen_categories = result.unseen
        if result.unseen:
            listed = ", ".join(f"{k!r} {v:.1%}" for k, v in result.unseen.items())
            report.notes.append(f"categories never seen in the reference: {listed}")
        if result.sparse:
            report.notes.append("some expected counts are below 5: chi-squared is approximate")
    return _Pending(report, testable, missing_testable)


def _apply_correction(pending: list[_Pending], method: str) -> None:
    """Correct the distribution tests as one family and the missing-rate tests as another.

    Two families keep the power of the distribution tests at "alpha over the number of
    features". The missing-rate family adds at most alpha more false alarms in theory; in
    practice far less, because a flag also needs the rate to move by ``missing_rate`` points.
    """
    tested = [p for p in pending if p.testable]
    for item, value in zip(
        tested, correct_p_values([p.report.p_value for p in tested], method), strict=True
    ):
        item.report.p_value_corrected = float(value)
    gaps = [p for p in pending if p.missing_testable]
    for item, value in zip(
        gaps, correct_p_values([p.report.missing_p_value for p in gaps], method), strict=True
    ):
        item.report.missing_p_value_corrected = float(value)


def _decide(item: _Pending, alpha: float, limits: EffectThresholds) -> DriftReport:
    """Drift = significant after correction AND a material effect (distribution or missing)."""
    report = item.report
    distribution_drift = (
        item.testable
        and report.p_value_corrected < alpha
        and report.effect_size >= report.effect_threshold
    )
    if item.testable and report.p_value_corrected < alpha and not distribution_drift:
        report.notes.append(
            f"significant but small: {report.effect_size_name} {report.effect_size:.3g} "
            f"< {report.effect_threshold:g}"
        )
    change = abs(report.missing_rate_current - report.missing_rate_reference)
    report.missing_rate_drifted = bool(
        item.missing_testable
        and report.missing_p_value_corrected < alpha
        and change >= limits.missing_rate
    )
    if report.missing_rate_drifted:
        report.notes.append(
            f"missing rate moved from {report.missing_rate_reference:.1%} to "
            f"{report.missing_rate_current:.1%}"
        )
    report.drifted = bool(distribution_drift or report.missing_rate_drifted)
    if report.drifted:
        report.status = "drift"
    return report


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------- run and CLI


@dataclass
class DriftRun:
    """One drift check: every feature's report, the predictions' and live quality."""

    features: list[DriftReport]
    prediction: DriftReport | None
    live: LiveQuality | None
    reference: ReferenceProfile
    reference_label: str
    current_label: str
    current_rows: int
    alpha: float
    correction: str
    min_rows: int
    finished_at: datetime
    prediction_column: str = "probability"

    @property
    def drifted_features(self) -> list[str]:
        return [r.feature for r in self.features if r.drifted]

    @property
    def drift_detected(self) -> bool:
        """Any feature drifted, or the predictions did (the CLI's exit status 1)."""
        return bool(self.drifted_features) or bool(self.prediction and self.prediction.drifted)

    def summary_line(self) -> str:
        drifted = self.drifted_features
        insufficient = [r.feature for r in self.features if r.status == "insufficient_data"]
        parts = [
            f"DRIFT in {len(drifted)} of {len(self.features)} features: {', '.join(drifted)}"
            if drifted
            else f"no feature drift in {len(self.features)} features"
        ]
        if self.prediction is not None:
            parts.append(f"predictions {self.prediction.status}")
        else:
            parts.append("predictions not compared (no probabilities on one side)")
        if insufficient:
            parts.append(f"too few rows to judge: {', '.join(insufficient)}")
        return "; ".join(parts) + f" ({self.current_rows:,} current rows)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "drift_detected": self.drift_detected,
            "drifted_features": self.drifted_features,
            "summary": self.summary_line(),
            "reference": self.reference_label,
            "current": self.current_label,
            "current_rows": self.current_rows,
            "alpha": self.alpha,
            "correction": self.correction,
            "min_rows": self.min_rows,
            "finished_at": self.finished_at.isoformat(),
            "features": [r.to_dict() for r in self.features],
            "prediction": self.prediction.to_dict() if self.prediction else None,
            "live_quality": _json_safe(self.live.to_dict()) if self.live else None,
        }


@dataclass(frozen=True)
class ReferenceSource:
    """What the reference side brings: the feature lists and their statistics."""

    numeric: list[str]
    categorical: list[str]
    profile: ReferenceProfile
    label: str


def load_reference(path: Path) -> ReferenceSource:
    """A bundle's metadata.json (schema + profile) or a CSV of reference rows."""
    if not path.is_file():
        raise DriftInputError(
            f"{path}: reference file not found (train a model or pass --reference)"
        )
    if path.suffix.lower() == ".json":
        return _reference_from_metadata(path)
    frame = read_table(path, "reference")
    numeric, categorical = infer_schema(frame)
    predictions = frame.get("probability")
    profile = ReferenceProfile.from_frame(frame, numeric, categorical, predictions)
    return ReferenceSource(numeric, categorical, profile, f"{path} ({len(frame):,} rows)")


def _reference_from_metadata(path: Path) -> ReferenceSource:
    from churn.schema import FeatureSchema

    try:
        metadata = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DriftInputError(f"{path}: not readable as JSON ({exc})") from exc
    for key in ("feature_schema", "reference_profile"):
        if not isinstance(metadata, dict) or key not in metadata:
            raise DriftInputError(
                f"{path}: no '{key}' entry; is this a model bundle's metadata.json "
                "(retrain to add a reference profile)?"
            )
    try:
        schema = FeatureSchema.from_dict(metadata["feature_schema"])
        profile = ReferenceProfile.from_dict(metadata["reference_profile"])
        profile.require(schema.numeric, schema.categorical)
    except (ProfileError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise DriftInputError(f"{path}: {first}") from exc
    version = metadata.get("version") or metadata.get("model_version") or "?"
    label = f"{path} (model {version}, {profile.n_rows:,} training rows)"
    return ReferenceSource(schema.numeric, schema.categorical, profile, label)


def infer_schema(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Feature kinds of a reference CSV: numeric dtypes are numeric, the rest categorical."""
    features = [c for c in frame.columns if c not in NON_FEATURE_COLUMNS]
    numeric = [c for c in features if pd.api.types.is_numeric_dtype(frame[c])]
    categorical = [c for c in features if c not in numeric]
    if not features:
        raise DriftInputError("reference CSV has no feature columns")
    return numeric, categorical


def read_table(path: Path, role: str) -> pd.DataFrame:
    """CSV or Parquet by extension; any failure becomes one line naming the file."""
    if not path.is_file():
        raise DriftInputError(f"{path}: {role} file not found")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError, ImportError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DriftInputError(f"{path}: cannot read {role} data ({first})") from exc


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """'90s', '15m', '24h', '7d' → timedelta (argparse type)."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a duration; use a positive number with s, m, h or d (e.g. 24h)"
        )
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def load_current_from_log(database_url: str, since: timedelta) -> tuple[pd.DataFrame, str]:
    """Prediction-log rows of the last ``since`` (features, probability, outcome)."""
    from churn.prediction_log import PredictionLogError, read_predictions

    start = datetime.now(UTC) - since
    try:
        frame = read_predictions(database_url, since=start)
    except PredictionLogError as exc:
        raise DriftInputError(str(exc)) from exc
    return frame, f"prediction log since {start.isoformat(timespec='seconds')}"


def check_columns(frame: pd.DataFrame, features: Sequence[str], label: str) -> None:
    """Schema mismatch is an error naming the first absent column (none when there are no rows:
    an empty window is 'insufficient data', not a broken schema)."""
    if frame.empty:
        return
    absent = [f for f in features if f not in frame.columns]
    if absent:
        raise DriftInputError(
            f"{label}: feature column '{absent[0]}' is missing"
            + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else "")
        )


def run_drift_check(
    reference: ReferenceSource,
    current: pd.DataFrame,
    current_label: str,
    *,
    alpha: float = 0.05,
    correction: str = "bonferroni",
    min_rows: int = 100,
    min_labelled: int = DEFAULT_MIN_LABELLED,
    thresholds: EffectThresholds | None = None,
) -> DriftRun:
    """Feature drift, prediction drift (when both sides have predictions) and live quality."""
    check_columns(current, [*reference.numeric, *reference.categorical], current_label)
    frame = _with_columns(current, [*reference.numeric, *reference.categorical])
    features = detect_feature_drift(
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
    if reference.profile.predictions is not None and "probability" in frame:
        prediction = detect_prediction_drift(
            reference.profile.predictions,
            frame["probability"].to_numpy(dtype=float),
            alpha,
            min_rows=min_rows,
            threshold=(thresholds or EffectThresholds()).wasserstein,
        )
    live = compute_live_quality(frame, min_labelled=min_labelled) if "outcome" in frame else None
    return DriftRun(
        features=features,
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
    )


def _with_columns(frame: pd.DataFrame, features: Sequence[str]) -> pd.DataFrame:
    """An empty log window has no feature columns at all; give it empty ones."""
    absent = [f for f in features if f not in frame.columns]
    if not absent:
        return frame
    return frame.assign(**{f: pd.Series(dtype=float) for f in absent})


def push_metrics(run: DriftRun, gateway: str, job: str = "drift_monitor") -> None:
    """Push the run's gauges to a Prometheus Pushgateway (names are the alert rules' contract).

    Undefined values (no p-value for lack of rows, skipped live metrics) are not pushed at
    all rather than pushed as NaN, so alert expressions never compare against NaN.
    """
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    labels = ["feature"]
    p_value = Gauge("drift_feature_p_value", "Corrected drift p-value", labels, registry=registry)
    effect = Gauge("drift_feature_effect_size", "Drift effect size", labels, registry=registry)
    flagged = Gauge("drift_feature_drifted", "1 if the feature drifted", labels, registry=registry)
    for report in run.features:
        flagged.labels(report.feature).set(int(report.drifted))
        if math.isfinite(report.p_value_corrected):
            p_value.labels(report.feature).set(report.p_value_corrected)
        if math.isfinite(report.effect_size):
            effect.labels(report.feature).set(report.effect_size)
    _gauge(
        registry,
        "drift_detected",
        "1 if any feature or the predictions drifted",
        int(run.drift_detected),
    )
    if run.prediction is not None:
        _gauge(
            registry,
            "drift_prediction_drifted",
            "1 if the predictions drifted",
            int(run.prediction.drifted),
        )
        if math.isfinite(run.prediction.p_value):
            _gauge(
                registry,
                "drift_prediction_p_value",
                "Prediction drift p-value",
                run.prediction.p_value,
            )
    _gauge(
        registry,
        "drift_last_run_timestamp_seconds",
        "End of the last drift run",
        run.finished_at.timestamp(),
    )
    if run.live is not None:
        _gauge(
            registry,
            "live_labelled_samples",
            "Labelled rows in the window",
            run.live.labelled_samples,
        )
        for name in ("auc", "precision", "recall"):
            value = getattr(run.live, name)
            if value is not None:
                _gauge(registry, f"live_{name}", f"Live {name} on labelled rows", value)
    try:
        push_to_gateway(gateway, job=job, registry=registry, timeout=10)
    except OSError as exc:
        raise DriftInputError(f"pushgateway {gateway}: push failed ({exc})") from exc


def _gauge(registry: Any, name: str, help_text: str, value: float) -> None:
    from prometheus_client import Gauge

    Gauge(name, help_text, registry=registry).set(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m monitoring.drift_detector",
        description="Compare current data with the training reference; exit 0 no drift, "
        "1 drift, 2 error.",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=Path("artifacts/metadata.json"),
        help="bundle metadata JSON (feature_schema + reference_profile) or a reference CSV",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--current", type=Path, help="current data, CSV or Parquet")
    source.add_argument(
        "--since", type=parse_duration, help="read the prediction log for this window (24h, 7d)"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "sqlite:///prediction_log.db"),
        help="prediction log URL for --since (default: $DATABASE_URL or sqlite:///prediction_log.db)",
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="family-wise test level")
    parser.add_argument("--correction", choices=CORRECTIONS, default="bonferroni")
    parser.add_argument("--min-rows", type=int, default=100, help="fewer rows: no verdict")
    parser.add_argument(
        "--min-labelled",
        type=int,
        default=DEFAULT_MIN_LABELLED,
        help="fewer labelled rows: live quality metrics skipped",
    )
    parser.add_argument("--json", type=Path, help="write the JSON report here")
    parser.add_argument("--html", type=Path, help="write the HTML report here")
    parser.add_argument("--pushgateway", help="HOST:PORT of a Prometheus Pushgateway")
    parser.add_argument("--job", default="drift_monitor", help="Pushgateway job name")
    return parser


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise DriftInputError(f"{path}: cannot write report ({exc.strerror or exc})") from exc


def _execute(args: argparse.Namespace) -> int:
    if not 0 < args.alpha < 1:
        raise DriftInputError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if args.min_rows < 1:
        raise DriftInputError(f"--min-rows must be at least 1, got {args.min_rows}")
    reference = load_reference(args.reference)
    if args.current is not None:
        current = read_table(args.current, "current")
        label = str(args.current)
    else:
        current, label = load_current_from_log(args.database_url, args.since)
    run = run_drift_check(
        reference,
        current,
        label,
        alpha=args.alpha,
        correction=args.correction,
        min_rows=args.min_rows,
        min_labelled=args.min_labelled,
    )
    from monitoring import report

    print(report.render_terminal(run))
    if args.json:
        _write(args.json, json.dumps(report.report_json(run), indent=2, allow_nan=False))
    if args.html:
        _write(
            args.html,
            report.render_html(
                run, _with_columns(current, reference.numeric + reference.categorical)
            ),
        )
    if args.pushgateway:
        push_metrics(run, args.pushgateway, args.job)
    return EXIT_DRIFT if run.drift_detected else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; every expected failure is one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return _execute(args)
    except DriftInputError as exc:
        print(f"drift_detector: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def benchmark_feature_drift(n_rows: int = 1_000_000, seed: int = 0) -> dict[str, float]:
    """Seconds to check ``n_rows`` × 7 features (4 numeric, 3 categorical), DataFrame vs
    DataFrame and DataFrame vs a 5,000-value profile. For bench/, not for tests."""
    rng = np.random.default_rng(seed)

    def frame(shift: float) -> pd.DataFrame:
        cats = np.array(["a", "b", "c", "d"], dtype=object)
        data: dict[str, Any] = {f"x{i}": rng.normal(shift, 1.0, n_rows) for i in range(4)}
        data.update({f"c{i}": cats[rng.integers(0, 4, n_rows)] for i in range(3)})
        return pd.DataFrame(data)

    numeric, categorical = [f"x{i}" for i in range(4)], [f"c{i}" for i in range(3)]
    reference, current = frame(0.0), frame(0.01)
    started = time.perf_counter()
    profile = ReferenceProfile.from_frame(reference, numeric, categorical, sample_size=5000)
    profiled = time.perf_counter()
    detect_feature_drift(reference, current, numeric, categorical)
    full = time.perf_counter()
    detect_feature_drift(profile, current, numeric, categorical)
    done = time.perf_counter()
    return {
        "rows": float(n_rows),
        "build_profile_s": profiled - started,
        "frame_vs_frame_s": full - profiled,
        "profile_vs_frame_s": done - full,
    }


if __name__ == "__main__":
    sys.exit(main())
