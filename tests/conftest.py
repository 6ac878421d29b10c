"""Shared fixtures: a small real model trained once per session, real MLflow stores."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from churn.config import Config, load_config
from churn.datagen import generate_customers
from churn.training import TrainResult, train

ROOT = Path(__file__).resolve().parents[1]

# Every bundle in the tests is signed and verified, as in production, with a fixed test-only
# key (not a secret). Set before anything trains; subprocesses (servers, CLIs) inherit it.
TEST_SIGNING_KEY = "test-only-bundle-signing-key-not-a-secret-0123456789"
os.environ.pop("BUNDLE_SIGNING_KEY_FILE", None)
os.environ["BUNDLE_SIGNING_KEY"] = TEST_SIGNING_KEY


def write_config(tmp: Path, **overrides: dict) -> Path:
    """A config.yaml in `tmp` based on the repo's, with sections overridden, small and fast."""
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    raw["data"]["train_path"] = str(tmp / "churn_train.csv")
    raw["model"].update({"n_estimators": 30, "max_depth": 8})
    raw["export"].update(
        {
            "artifacts_dir": str(tmp / "artifacts"),
            "candidates_dir": str(tmp / "candidates"),
            "model_card": str(tmp / "MODEL_CARD.md"),
            "profile_sample_size": 2000,
        }
    )
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@dataclass(frozen=True)
class TrainedModel:
    config_path: Path
    config: Config
    result: TrainResult

    @property
    def bundle_dir(self) -> Path:
        """The trained (candidate) bundle: API tests serve it without a promotion."""
        return self.result.bundle_path.parent

    @property
    def model_path(self) -> Path:
        return self.bundle_dir / "model.pkl"

    @property
    def tracking_uri(self) -> str:
        return self.config.mlflow.tracking_uri


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedModel]:
    """A real (small) model: 4,000 generated customers, 30 trees, embedded MLflow store."""
    tmp = tmp_path_factory.mktemp("trained")
    generate_customers(4000, seed=11).to_csv(tmp / "churn_train.csv", index=False)
    config_path = write_config(tmp)
    previous = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        config = load_config(config_path)
        result = train(config, config_path=config_path)
        yield TrainedModel(config_path=config_path, config=config, result=result)
    finally:
        if previous is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous
