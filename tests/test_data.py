"""Training-data validation and the synthetic generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from churn.config import load_config
from churn.data import DataValidationError, load_training_data
from churn.datagen import (
    DRIFT_SCENARIOS,
    bayes_optimal_auc,
    generate_customers,
    generate_drifted,
    generate_with_truth,
)
from tests.conftest import write_config


def _config_for(tmp_path: Path, frame: pd.DataFrame, **overrides: dict):
    frame.to_csv(tmp_path / "churn_train.csv", index=False)
    return load_config(write_config(tmp_path, **overrides))


def test_generator_is_deterministic_and_realistic() -> None:
    a, b = generate_customers(3000, seed=5), generate_customers(3000, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(generate_customers(3000, seed=6))
    assert set(a["contract_type"].unique()) == {"Month-to-month", "One year", "Two year"}
    assert a["total_charges"].isna().any() and a["payment_method"].isna().any()
    complete = a.dropna()
    ratio = complete["total_charges"] / (complete["monthly_charges"] * complete["tenure"])
    assert ratio[complete["tenure"] > 0].between(0.9, 1.1).all()
    by_contract = a.groupby("contract_type")["churned"].mean()
    assert by_contract["Month-to-month"] > by_contract["One year"] > by_contract["Two year"]


def test_bayes_optimal_auc_sits_near_092() -> None:
    frame, truth = generate_with_truth(50_000, seed=42)
    _, val_idx = train_test_split(
        np.arange(len(frame)), test_size=0.2, random_state=42, stratify=frame["churned"]
    )
    auc = bayes_optimal_auc(truth[val_idx], frame["churned"].to_numpy()[val_idx])
    assert 0.90 <= auc <= 0.94


@pytest.mark.parametrize("scenario", sorted(set(DRIFT_SCENARIOS) - {"none"}))
def test_drift_scenarios_change_the_world(scenario: str) -> None:
    base = generate_drifted("none", 5000, seed=3)
    drifted = generate_drifted(scenario, 5000, seed=3)
    changed = {
        "price_increase": drifted["monthly_charges"].mean() > base["monthly_charges"].mean() * 1.1,
        "new_payment_method": (drifted["payment_method"] == "Digital wallet").mean() > 0.2,
        "month_to_month_shift": (drifted["contract_type"] == "Month-to-month").mean()
        > (base["contract_type"] == "Month-to-month").mean() + 0.15,
        # a concept shift: the features stay as they were, fibre customers churn more
        "fibre_competitor": drifted.drop(columns="churned").equals(base.drop(columns="churned"))
        and drifted.loc[drifted["internet_service"] == "Fiber optic", "churned"].mean()
        > base.loc[base["internet_service"] == "Fiber optic", "churned"].mean() + 0.05,
    }
    assert changed[scenario]


def test_unknown_scenario_is_named() -> None:
    with pytest.raises(ValueError, match="unknown drift scenario 'meteor'"):
        generate_drifted("meteor", 10)


def test_messy_export_loads(tmp_path: Path) -> None:
    frame = generate_customers(600, seed=1)
    frame["churned"] = np.where(frame["churned"] == 1, "Yes", "no")
    frame["payment_method"] = frame["payment_method"].astype(object)
    frame.loc[:5, "payment_method"] = "   "
    frame.loc[:5, "tenure"] = np.nan
    frame.loc[7, "churned"] = None
    data = load_training_data(_config_for(tmp_path, frame))
    assert set(data.target.unique()) == {0, 1}
    assert data.dropped_unlabelled == 1
    assert data.features["payment_method"].isna().sum() >= 6
    assert data.features["tenure"].dtype == float
    assert len(data.digest) == 64


@pytest.mark.parametrize("target", [["true", "false"], [1, 0], ["YES", "No"], [True, False]])
def test_target_spellings(tmp_path: Path, target: list) -> None:
    frame = generate_customers(400, seed=2)
    frame["churned"] = np.where(frame["churned"] == 1, target[0], target[1])
    data = load_training_data(_config_for(tmp_path, frame))
    assert data.target.sum() == (frame["churned"] == target[0]).sum()


def test_missing_column_is_named_with_suggestion(tmp_path: Path) -> None:
    frame = generate_customers(300, seed=3).rename(columns={"tenure": "tenure_months"})
    with pytest.raises(DataValidationError) as err:
        load_training_data(_config_for(tmp_path, frame))
    assert "features.numeric names 'tenure', which is not a column of" in str(err.value)
    assert "did you mean 'tenure_months'?" in str(err.value)


def test_non_binary_target(tmp_path: Path) -> None:
    frame = generate_customers(300, seed=3)
    frame["churned"] = frame["churned"].astype(object)
    frame.loc[0, "churned"] = "maybe"
    with pytest.raises(DataValidationError, match=r"must be binary.*'maybe'"):
        load_training_data(_config_for(tmp_path, frame))


def test_one_class_only(tmp_path: Path) -> None:
    frame = generate_customers(300, seed=3).assign(churned=0)
    with pytest.raises(DataValidationError, match="only one class"):
        load_training_data(_config_for(tmp_path, frame))


def test_garbage_in_numeric_column(tmp_path: Path) -> None:
    frame = generate_customers(300, seed=3)
    frame["monthly_charges"] = frame["monthly_charges"].astype(object)
    frame.loc[4, "monthly_charges"] = "N/A dollars"
    with pytest.raises(DataValidationError, match=r"'monthly_charges' has 1 non-numeric.*row 6"):
        load_training_data(_config_for(tmp_path, frame))


def test_missing_data_file(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    with pytest.raises(DataValidationError, match="data file not found"):
        load_training_data(config)
