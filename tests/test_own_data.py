"""Training on your own data never adds a version to the demo's `churn-classifier`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from churn.config import load_config, parse_config
from churn.datagen import generate_customers
from churn.training import train
from tests.conftest import ROOT

FEATURES = yaml.safe_load((ROOT / "config.yaml").read_text())["features"]


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({}, ("acme_customers", "acme_customers")),
        ({"model_name": "acme-churn"}, ("acme-churn", "acme-churn")),
        ({"model_name": "m", "experiment_name": "e"}, ("m", "e")),
    ],
)
def test_model_and_experiment_names_default_from_the_data_file(
    section: dict, expected: tuple[str, str]
) -> None:
    raw: dict = {"data": {"train_path": "exports/acme_customers.csv"}, "features": FEATURES}
    if section:
        raw["mlflow"] = section
    config = parse_config(raw)
    assert (config.mlflow.model_name, config.mlflow.experiment_name) == expected


def test_the_repo_config_still_names_the_demo_model() -> None:
    config = load_config(ROOT / "config.yaml")
    assert config.mlflow.model_name == "churn-classifier"
    assert config.mlflow.experiment_name == "churn-prediction"


def test_own_data_registers_its_own_model_beside_the_demo(tmp_path: Path) -> None:
    """The README's "Train on your own data" config, trained into a store shared with the demo."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    generate_customers(1200, seed=21).to_csv(tmp_path / "acme_customers.csv", index=False)
    raw = {
        "mlflow": {"tracking_uri": store},
        "data": {"train_path": str(tmp_path / "acme_customers.csv")},
        "features": FEATURES,
        "model": {"n_estimators": 20, "max_depth": 6},
        "export": {
            "artifacts_dir": str(tmp_path / "artifacts"),
            "model_card": str(tmp_path / "MODEL_CARD.md"),
            "profile_sample_size": 500,
        },
    }
    path = tmp_path / "acme.yaml"
    path.write_text(yaml.safe_dump(raw))
    previous = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        result = train(load_config(path), config_path=path)
    finally:
        if previous is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    assert result.model_name == "acme_customers"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    names = {m.name for m in client.search_registered_models()}
    assert names == {"acme_customers"}, "no version of churn-classifier was registered"
    experiment = client.get_experiment_by_name("acme_customers")
    assert experiment is not None and client.get_experiment_by_name("churn-prediction") is None
