"""Statistical behaviour of the drift detector on synthetic data with a known truth.

Targets (from the issue): with no change, any false alarm across 7 features at most about
alpha; a 0.3 SD mean shift or a 10-point category share change at 1,000 rows found at least
9 times in 10; a 0.01 SD shift on a million rows not called drift. Seeds are fixed, so each
figure is reproducible; the margins are binomial (about 2.3 standard errors).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from churn.profile import CategoricalSummary, NumericSummary, ReferenceProfile
from monitoring.drift_detector import (
    DriftInputError,
    EffectThresholds,
    categorical_statistics,
    correct_p_values,
    detect_feature_drift,
    detect_prediction_drift,
    ks_and_wasserstein,
    missing_rate_p_value,
    population_stability_index,
)

NUMERIC = ["x_normal", "x_gamma", "x_rounded", "x_count"]
CATEGORICAL = ["c_three", "c_four", "c_two"]
SHARES = {
    "c_three": (["m2m", "one", "two"], [0.55, 0.21, 0.24]),
    "c_four": (["e", "m", "b", "c"], [0.34, 0.23, 0.22, 0.21]),
    "c_two": (["yes", "no"], [0.7, 0.3]),
}
ALPHA = 0.05


def make_frame(
    rng: np.random.Generator,
    n: int,
    mean_shift: float = 0.0,
    shares: dict[str, list[float]] | None = None,
) -> pd.DataFrame:
    """Seven features of different shapes (continuous, skewed, rounded, small counts)."""
    data: dict[str, np.ndarray] = {
        "x_normal": rng.normal(mean_shift, 1.0, n),
        "x_gamma": rng.gamma(2.0, 1.0, n),
        "x_rounded": np.round(rng.gamma(2.0, 7.0, n)),
        "x_count": (rng.poisson(1.2, n) + 1).astype(float),
    }
    for name, (categories, p) in SHARES.items():
        probs = (shares or {}).get(name, p)
        data[name] = np.asarray(categories, dtype=object)[rng.choice(len(categories), n, p=probs)]
    return pd.DataFrame(data)


def alarm_margin(p: float, reps: int) -> float:
    return 2.33 * math.sqrt(p * (1 - p) / reps)


def any_drift(reports: list) -> bool:
    return any(r.drifted for r in reports)


def drifted(reports: list, feature: str) -> bool:
    return next(r for r in reports if r.feature == feature).drifted


# --------------------------------------------------------------------------- targets


def test_no_shift_false_alarm_rate_at_most_alpha() -> None:
    rng = np.random.default_rng(20240601)
    reps = 300
    alarms = sum(
        any_drift(
            detect_feature_drift(make_frame(rng, 1000), make_frame(rng, 1000), NUMERIC, CATEGORICAL)
        )
        for _ in range(reps)
    )
    assert alarms / reps <= ALPHA + alarm_margin(ALPHA, reps)


@pytest.mark.slow
def test_no_shift_false_alarm_rate_against_a_sampled_profile() -> None:
    rng = np.random.default_rng(7)
    reps = 200
    alarms = 0
    for _ in range(reps):
        profile = ReferenceProfile.from_frame(
            make_frame(rng, 20_000),
            NUMERIC,
            CATEGORICAL,
            sample_size=5000,
            seed=int(rng.integers(2**31)),
        )
        alarms += any_drift(
            detect_feature_drift(profile, make_frame(rng, 1000), NUMERIC, CATEGORICAL)
        )
    assert alarms / reps <= ALPHA + alarm_margin(ALPHA, reps)


@pytest.mark.parametrize("feature", NUMERIC)
def test_a_03_sd_mean_shift_is_found_9_times_in_10(feature: str) -> None:
    rng = np.random.default_rng(11)
    reps, found = 100, 0
    for _ in range(reps):
        reference, current = make_frame(rng, 1000), make_frame(rng, 1000)
        current[feature] += 0.3 * reference[feature].std()
        found += drifted(detect_feature_drift(reference, current, NUMERIC, CATEGORICAL), feature)
    assert found / reps >= 0.9


@pytest.mark.slow
def test_a_03_sd_shift_is_found_against_a_5000_value_profile() -> None:
    rng = np.random.default_rng(12)
    reps, found = 100, 0
    for _ in range(reps):
        profile = ReferenceProfile.from_frame(
            make_frame(rng, 20_000),
            NUMERIC,
            CATEGORICAL,
            sample_size=5000,
            seed=int(rng.integers(2**31)),
        )
        current = make_frame(rng, 1000, mean_shift=0.3)
        report = detect_feature_drift(profile, current, NUMERIC, CATEGORICAL)
        found += drifted(report, "x_normal")
        assert report[0].reference_sample_size == 5000
    assert found / reps >= 0.9


def _moved(feature: str, spread: bool) -> list[float]:
    """10 points onto the first category, from the second one or spread over all others."""
    p = np.array(SHARES[feature][1])
    if spread:
        p[1:] -= 0.1 * p[1:] / p[1:].sum()
    else:
        p[1] -= 0.1
    p[0] += 0.1
    return p.tolist()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("feature", "spread"),
    [("c_three", True), ("c_two", True), ("c_four", False), ("c_three", False)],
)
def test_a_10_point_share_change_is_found_9_times_in_10(feature: str, spread: bool) -> None:
    rng = np.random.default_rng(13)
    reps, found = 200, 0
    for _ in range(reps):
        current = make_frame(rng, 1000, shares={feature: _moved(feature, spread)})
        reports = detect_feature_drift(make_frame(rng, 1000), current, NUMERIC, CATEGORICAL)
        found += drifted(reports, feature)
    assert found / reps >= 0.9


def test_a_10_point_spread_change_is_found_against_a_training_size_profile() -> None:
    """The hardest shape (4 categories, change spread thin) against a 50,000-row profile."""
    rng = np.random.default_rng(14)
    reps, found = 100, 0
    profile = ReferenceProfile.from_frame(
        make_frame(rng, 50_000), NUMERIC, CATEGORICAL, sample_size=5000
    )
    for _ in range(reps):
        current = make_frame(rng, 1000, shares={"c_four": _moved("c_four", spread=True)})
        found += drifted(detect_feature_drift(profile, current, NUMERIC, CATEGORICAL), "c_four")
    assert found / reps >= 0.9


def test_a_001_sd_shift_on_a_million_rows_is_not_drift() -> None:
    rng = np.random.default_rng(15)
    n = 1_000_000
    reference = pd.DataFrame({"x": rng.normal(0, 1, n), "c": rng.choice(["a", "b"], n)})
    current = pd.DataFrame(
        {"x": rng.normal(0.01, 1, n), "c": rng.choice(["a", "b"], n, p=[0.505, 0.495])}
    )
    x, c = detect_feature_drift(reference, current, ["x"], ["c"])
    assert x.p_value_corrected < ALPHA  # a million rows see it ...
    assert c.p_value_corrected < ALPHA
    assert not x.drifted  # ... but it is too small to matter
    assert not c.drifted
    assert x.effect_size == pytest.approx(0.01, abs=0.005)
    assert any("significant but small" in note for note in x.notes)


def test_a_real_shift_on_a_thousand_rows_is_drift_while_a_tiny_one_is_not() -> None:
    rng = np.random.default_rng(16)
    reference = make_frame(rng, 1000)
    reports = detect_feature_drift(reference, make_frame(rng, 1000, 0.5), NUMERIC, CATEGORICAL)
    assert [r.feature for r in reports if r.drifted] == ["x_normal"]
    assert reports[0].status == "drift"
    assert all(r.status == "ok" for r in reports[1:])


# --------------------------------------------------------------------------- mechanics


def test_too_few_rows_is_insufficient_data_not_a_verdict() -> None:
    rng = np.random.default_rng(17)
    reports = detect_feature_drift(
        make_frame(rng, 1000), make_frame(rng, 50, mean_shift=3.0), NUMERIC, CATEGORICAL
    )
    for report in reports:
        assert report.status == "insufficient_data"
        assert report.drifted is False
        assert math.isnan(report.p_value_corrected)
    assert reports[0].effect_size > 2  # the evidence is still shown
    assert "minimum 100" in reports[0].notes[0]


def test_min_rows_is_configurable() -> None:
    rng = np.random.default_rng(18)
    reports = detect_feature_drift(
        make_frame(rng, 1000),
        make_frame(rng, 50, mean_shift=3.0),
        NUMERIC,
        CATEGORICAL,
        min_rows=30,
    )
    assert reports[0].drifted


def test_unseen_categories_are_reported_and_counted() -> None:
    rng = np.random.default_rng(19)
    reference = make_frame(rng, 2000)
    current = make_frame(rng, 2000)
    wallet = rng.random(2000) < 0.2
    current.loc[wallet, "c_four"] = "wallet"
    report = detect_feature_drift(reference, current, NUMERIC, CATEGORICAL)[5]
    assert report.feature == "c_four"
    assert report.unseen_categories == {"wallet": pytest.approx(wallet.mean())}
    assert report.drifted
    assert any("wallet" in note for note in report.notes)


def test_a_rare_unseen_category_is_listed_without_an_alarm() -> None:
    rng = np.random.default_rng(20)
    reference, current = make_frame(rng, 5000), make_frame(rng, 5000)
    current.loc[:4, "c_two"] = "typo"
    report = detect_feature_drift(reference, current, NUMERIC, CATEGORICAL)[6]
    assert report.unseen_categories == {"typo": pytest.approx(5 / 5000)}
    assert not report.drifted


def test_chi2_homogeneity_handles_unequal_totals() -> None:
    """Same shares, ten times the rows: no evidence of change (a naive chisquare would cry)."""
    reference = CategoricalSummary({"a": 500, "b": 300, "c": 200}, 0)
    current = CategoricalSummary({"a": 5000, "b": 3000, "c": 2000}, 0)
    result = categorical_statistics(reference, current)
    assert result.p_value == pytest.approx(1.0)
    assert result.js == pytest.approx(0.0, abs=1e-9)
    naive = stats.chisquare([5000, 3000, 2000], [500, 300, 200], sum_check=False)
    assert naive.pvalue < 1e-100


def test_chi2_table_matches_scipy_on_the_union_of_categories() -> None:
    reference = CategoricalSummary({"a": 60, "b": 40}, 0)
    current = CategoricalSummary({"a": 50, "b": 30, "new": 20}, 0)
    result = categorical_statistics(reference, current)
    expected = stats.chi2_contingency([[60, 40, 0], [50, 30, 20]], correction=False)
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.unseen == {"new": pytest.approx(0.2)}


def test_missing_rate_jump_is_flagged() -> None:
    rng = np.random.default_rng(21)
    reference, current = make_frame(rng, 2000), make_frame(rng, 2000)
    reference.loc[rng.random(2000) < 0.01, "x_gamma"] = np.nan
    current.loc[rng.random(2000) < 0.2, "x_gamma"] = np.nan
    report = detect_feature_drift(reference, current, NUMERIC, CATEGORICAL)[1]
    assert report.missing_rate_drifted
    assert report.drifted
    assert report.missing_rate_current == pytest.approx(0.2, abs=0.03)
    assert report.missing_p_value_corrected < ALPHA


def test_a_stable_missing_rate_is_not_flagged() -> None:
    rng = np.random.default_rng(22)
    reference, current = make_frame(rng, 2000), make_frame(rng, 2000)
    for frame in (reference, current):
        frame.loc[rng.random(2000) < 0.05, "c_two"] = None
    report = detect_feature_drift(reference, current, NUMERIC, CATEGORICAL)[6]
    assert not report.missing_rate_drifted
    assert math.isfinite(report.missing_p_value)


def test_missing_rate_p_value_matches_a_2x2_chi2() -> None:
    p = missing_rate_p_value(1000, 20, 800, 40)
    table = [[20, 980], [40, 760]]
    assert p == pytest.approx(stats.chi2_contingency(table, correction=False).pvalue)
    assert missing_rate_p_value(1000, 0, 1000, 0) is None


def test_ks_and_wasserstein_agree_with_scipy() -> None:
    rng = np.random.default_rng(23)
    for n, m in [(50, 70), (1000, 1000), (5000, 1000), (30_000, 20_000)]:
        a = np.round(rng.normal(0, 1, n), 1)  # ties on purpose
        b = np.round(rng.normal(0.05, 1.1, m), 1)
        d, p, w = ks_and_wasserstein(a, b)
        expected = stats.ks_2samp(a, b)
        assert d == pytest.approx(expected.statistic)
        assert p == pytest.approx(expected.pvalue, rel=0.02)
        assert w == pytest.approx(stats.wasserstein_distance(a, b))


def test_ks_p_value_for_very_large_samples_matches_smirnov() -> None:
    rng = np.random.default_rng(24)
    a, b = rng.normal(0, 1, 200_000), rng.normal(0.01, 1, 200_000)
    d, p, _ = ks_and_wasserstein(a, b)
    assert p == pytest.approx(stats.kstwo.sf(d, 100_000), rel=0.01)


def test_psi_known_value_and_empty_bins() -> None:
    assert population_stability_index(np.array([50.0, 50.0]), np.array([50.0, 50.0])) == 0
    psi = population_stability_index(np.array([60.0, 40.0]), np.array([40.0, 60.0]))
    assert psi == pytest.approx(2 * 0.2 * math.log(1.5))
    assert math.isfinite(population_stability_index(np.array([100.0, 0.0]), np.array([0.0, 100.0])))


def test_psi_counts_values_beyond_the_reference_range() -> None:
    rng = np.random.default_rng(25)
    reference = NumericSummary.from_values(rng.normal(0, 1, 5000))
    far = pd.DataFrame({"x": rng.normal(10, 1, 1000)})
    report = detect_feature_drift(pd.DataFrame({"x": reference.values}), far, ["x"], [])[0]
    assert report.psi > 5  # everything lands in the open top bin
    assert report.drifted


def test_corrections() -> None:
    p = [0.01, 0.04, 0.03, 0.5]
    assert correct_p_values(p, "none").tolist() == p
    assert correct_p_values(p, "bonferroni").tolist() == pytest.approx([0.04, 0.16, 0.12, 1.0])
    assert correct_p_values(p, "holm").tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert correct_p_values(p, "bh").tolist() == pytest.approx([0.04, 0.0533333, 0.0533333, 0.5])
    with pytest.raises(ValueError, match="holm"):
        correct_p_values(p, "sidak")
    assert correct_p_values([], "holm").size == 0


@pytest.mark.parametrize("correction", ["bonferroni", "holm", "bh", "none"])
def test_every_correction_runs_and_none_is_the_raw_p(correction: str) -> None:
    rng = np.random.default_rng(26)
    reports = detect_feature_drift(
        make_frame(rng, 500), make_frame(rng, 500), NUMERIC, CATEGORICAL, correction=correction
    )
    for report in reports:
        assert report.p_value_corrected >= report.p_value - 1e-12
        if correction == "none":
            assert report.p_value_corrected == report.p_value


def test_thresholds_are_configurable() -> None:
    rng = np.random.default_rng(27)
    reference, current = make_frame(rng, 3000), make_frame(rng, 3000, mean_shift=0.3)
    strict = detect_feature_drift(
        reference, current, NUMERIC, CATEGORICAL, thresholds=EffectThresholds(wasserstein=0.5)
    )
    assert not strict[0].drifted
    with pytest.raises(ValueError, match="wasserstein"):
        EffectThresholds(wasserstein=-1)


def test_bad_arguments_are_refused() -> None:
    rng = np.random.default_rng(28)
    frame = make_frame(rng, 200)
    with pytest.raises(ValueError, match="alpha"):
        detect_feature_drift(frame, frame, NUMERIC, CATEGORICAL, alpha=1.5)
    with pytest.raises(DriftInputError, match=r"current.*x_gamma"):
        detect_feature_drift(frame, frame.drop(columns="x_gamma"), NUMERIC, CATEGORICAL)
    with pytest.raises(DriftInputError, match="DataFrame"):
        detect_feature_drift(frame, [1, 2, 3], NUMERIC, CATEGORICAL)  # type: ignore[arg-type]


def test_reference_may_be_a_profile_dict() -> None:
    rng = np.random.default_rng(29)
    profile = ReferenceProfile.from_frame(
        make_frame(rng, 10_000), NUMERIC, CATEGORICAL, sample_size=5000
    )
    as_json = json.loads(json.dumps(profile.to_dict()))
    reports = detect_feature_drift(as_json, make_frame(rng, 1000, 1.0), NUMERIC, CATEGORICAL)
    assert reports[0].drifted
    assert reports[0].n_reference == 10_000


def test_prediction_drift() -> None:
    rng = np.random.default_rng(30)
    reference = rng.beta(2, 5, 5000)
    same = detect_prediction_drift(reference, rng.beta(2, 5, 2000))
    moved = detect_prediction_drift(reference, rng.beta(3, 4, 2000))
    assert not same.drifted
    assert same.status == "ok"
    assert moved.drifted
    assert moved.status == "drift"
    assert moved.feature == "prediction"
    assert moved.kind == "prediction"
    assert moved.p_value_corrected == moved.p_value
    few = detect_prediction_drift(reference, rng.beta(3, 4, 20))
    assert few.status == "insufficient_data"
    assert not few.drifted


def test_report_is_strict_json() -> None:
    rng = np.random.default_rng(31)
    reports = detect_feature_drift(make_frame(rng, 1000), make_frame(rng, 20), NUMERIC, CATEGORICAL)
    text = json.dumps([r.to_dict() for r in reports], allow_nan=False)
    assert json.loads(text)[0]["p_value_corrected"] is None
