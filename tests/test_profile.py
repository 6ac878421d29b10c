"""The reference profile: small, JSON-serialisable, deterministic, faithful to the data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from churn.datagen import generate_customers
from churn.profile import (
    PROFILE_VERSION,
    NumericSummary,
    ProfileError,
    ReferenceProfile,
    bin_counts,
    build_reference_profile,
)

NUMERIC = ["tenure", "monthly_charges", "total_charges", "num_products"]
CATEGORICAL = ["contract_type", "payment_method", "internet_service"]


@pytest.fixture(scope="module")
def customers() -> pd.DataFrame:
    return generate_customers(40_000, seed=3)


@pytest.fixture(scope="module")
def profile_dict(customers: pd.DataFrame) -> dict:
    predictions = np.random.default_rng(1).beta(2, 5, len(customers))
    return build_reference_profile(customers, NUMERIC, CATEGORICAL, predictions)


def test_profile_is_json_and_small(profile_dict: dict) -> None:
    text = json.dumps(profile_dict, allow_nan=False)
    assert len(text.encode()) < 1_000_000
    assert json.loads(text) == profile_dict


def test_numeric_entries_describe_the_full_data(
    customers: pd.DataFrame, profile_dict: dict
) -> None:
    for name in NUMERIC:
        entry = profile_dict["numeric"][name]
        column = customers[name]
        assert entry["n"] == column.notna().sum()
        assert entry["missing_rate"] == pytest.approx(column.isna().mean())
        assert entry["mean"] == pytest.approx(column.mean())
        assert entry["std"] == pytest.approx(column.std())
        assert len(entry["sample"]) == 5000
        assert set(entry["sample"]) <= set(np.round(column.dropna(), 6)) | set(column.dropna())
        edges = np.asarray(entry["quantile_edges"])
        assert np.all(np.diff(edges) > 0)
        assert sum(entry["bin_counts"]) == entry["n"]
    assert profile_dict["numeric"]["total_charges"]["missing_rate"] > 0


def test_categorical_counts_match(customers: pd.DataFrame, profile_dict: dict) -> None:
    for name in CATEGORICAL:
        entry = profile_dict["categorical"][name]
        assert entry["counts"] == customers[name].dropna().value_counts().to_dict()
        assert entry["missing_rate"] == pytest.approx(customers[name].isna().mean())
    assert profile_dict["categorical"]["payment_method"]["n_missing"] > 0


def test_predictions_sampled(profile_dict: dict) -> None:
    assert profile_dict["predictions"]["n"] == 40_000
    assert len(profile_dict["predictions"]["sample"]) == 5000


def test_profile_is_deterministic_per_seed(customers: pd.DataFrame) -> None:
    small = customers.head(8000)
    first = build_reference_profile(small, NUMERIC, CATEGORICAL, None, seed=5)
    again = build_reference_profile(small, NUMERIC, CATEGORICAL, None, seed=5)
    other = build_reference_profile(small, NUMERIC, CATEGORICAL, None, seed=6)
    assert first == again
    assert first["numeric"]["tenure"]["sample"] != other["numeric"]["tenure"]["sample"]
    assert first["predictions"] is None


def test_small_data_keeps_every_value(customers: pd.DataFrame) -> None:
    small = customers.head(300)
    entry = build_reference_profile(small, NUMERIC, CATEGORICAL, None)["numeric"]["tenure"]
    assert entry["sampled"] is False
    assert sorted(entry["sample"]) == sorted(small["tenure"].tolist())


def test_round_trip_through_from_dict(profile_dict: dict) -> None:
    profile = ReferenceProfile.from_dict(json.loads(json.dumps(profile_dict)))
    assert set(profile.numeric) == set(NUMERIC)
    assert (
        profile.categorical["contract_type"].n == profile_dict["categorical"]["contract_type"]["n"]
    )
    assert profile.numeric["tenure"].sampled
    assert profile.to_dict() == profile_dict
    profile.require(NUMERIC, CATEGORICAL)


def test_require_names_the_missing_feature(profile_dict: dict) -> None:
    profile = ReferenceProfile.from_dict(profile_dict)
    with pytest.raises(ProfileError, match="age"):
        profile.require([*NUMERIC, "age"], CATEGORICAL)
    with pytest.raises(ProfileError, match=r"tenure \(categorical\)"):
        profile.require([], ["tenure"])


def test_from_dict_refuses_other_versions_and_malformed_entries(profile_dict: dict) -> None:
    with pytest.raises(ProfileError, match="version"):
        ReferenceProfile.from_dict({**profile_dict, "version": PROFILE_VERSION + 1})
    broken = json.loads(json.dumps(profile_dict))
    broken["numeric"]["tenure"]["bin_counts"] = [1, 2]
    with pytest.raises(ProfileError, match=r"numeric\.tenure"):
        ReferenceProfile.from_dict(broken)
    broken = json.loads(json.dumps(profile_dict))
    del broken["categorical"]["contract_type"]["counts"]
    with pytest.raises(ProfileError, match=r"categorical\.contract_type"):
        ReferenceProfile.from_dict(broken)


def test_build_refuses_absent_columns_and_bad_sample_size(customers: pd.DataFrame) -> None:
    with pytest.raises(ProfileError, match="tenur"):
        build_reference_profile(customers, ["tenur"], [], None)
    with pytest.raises(ValueError, match="sample_size"):
        build_reference_profile(customers, NUMERIC, [], None, sample_size=0)


def test_bins_have_open_outer_edges() -> None:
    edges = np.array([0.0, 1.0, 2.0])
    counts = bin_counts(np.array([-1e9, 0.0, 0.5, 1.0, 2.0, 2.5, 1e9]), edges)
    # (-inf, 0], (0, 1], (1, 2], (2, inf): edge values go to the lower bin.
    assert counts.tolist() == [2, 2, 1, 2]


def test_numeric_summary_treats_non_numbers_as_missing() -> None:
    summary = NumericSummary.from_values(pd.Series([1.0, None, "x", 3.0, np.inf]))
    assert summary.n == 2
    assert summary.n_missing == 3
