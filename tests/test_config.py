"""Config validation: every mistake is named in one line, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from churn.config import ConfigError, load_config, parse_config
from tests.conftest import ROOT


def _raw() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_repo_config_has_the_reference_keys() -> None:
    config = load_config(ROOT / "config.yaml")
    assert config.mlflow.experiment_name == "churn-prediction"
    assert config.mlflow.model_name == "churn-classifier"
    assert config.data.target_column == "churned"
    assert config.training.val_size == 0.2
    assert config.training.random_state == 42
    assert (config.model.n_estimators, config.model.max_depth) == (200, 8)
    assert config.gate.min_val_auc == 0.88
    assert config.features.numeric == ["tenure", "monthly_charges", "total_charges", "num_products"]
    assert config.features.categorical == ["contract_type", "payment_method", "internet_service"]


def test_misspelt_key_is_named_with_a_suggestion() -> None:
    raw = _raw()
    raw["model"]["n_estimatorz"] = raw["model"].pop("n_estimators")
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "config.yaml")
    assert str(err.value) == (
        "config.yaml: model.n_estimatorz: unknown key; did you mean 'n_estimators'?"
    )


def test_unknown_section_is_refused() -> None:
    raw = _raw()
    raw["trainig"] = {"val_size": 0.3}
    with pytest.raises(ConfigError, match=r"trainig: unknown key; did you mean 'training'\?"):
        parse_config(raw)


@pytest.mark.parametrize(
    ("section", "key", "value", "fragment"),
    [
        ("model", "n_estimators", "many", "model.n_estimators"),
        ("training", "val_size", 1.5, "training.val_size"),
        ("model", "type", "xgboost", "model.type"),
        ("gate", "min_val_auc", "high", "gate.min_val_auc"),
        ("risk", "medium", 0.9, "medium (0.9) must not exceed high"),
    ],
)
def test_wrong_types_and_values_name_the_key(
    section: str, key: str, value: object, fragment: str
) -> None:
    raw = _raw()
    raw[section][key] = value
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "config.yaml")
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_target_listed_as_feature_is_refused() -> None:
    raw = _raw()
    raw["features"]["numeric"].append("churned")
    with pytest.raises(ConfigError, match="target 'churned' is also listed as a feature"):
        parse_config(raw)


def test_rules_must_name_a_feature_and_fit_its_kind() -> None:
    raw = _raw()
    raw["features"]["rules"]["tenur"] = {"min": 0}
    with pytest.raises(ConfigError, match="rules names 'tenur'"):
        parse_config(raw)
    raw = _raw()
    raw["features"]["rules"]["tenure"] = {"allowed": ["a"]}
    with pytest.raises(ConfigError, match="only for categorical"):
        parse_config(raw)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


def test_environment_tracking_uri_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(ROOT / "config.yaml")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert config.tracking_uri == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert config.tracking_uri == "http://127.0.0.1:5000"


def test_rollout_and_closed_loop_sections_have_the_designed_defaults() -> None:
    config = load_config(ROOT / "config.yaml")
    rollout = config.rollout
    assert (rollout.canary_share, rollout.margin, rollout.min_pairs) == (0.10, 0.005, 500)
    assert (rollout.confidence, rollout.method, rollout.bootstrap_resamples) == (
        0.95,
        "delong",
        2000,
    )
    assert rollout.guardrails.model_dump() == {
        "min_requests": 200,
        "window_seconds": 300,
        "max_error_ratio": 0.02,
        "max_p95_latency_ms": 250,
        "max_high_risk_rate_delta": 0.15,
    }
    assert config.closed_loop.promotion == "shadow"
    raw = _raw()
    del raw["rollout"], raw["closed_loop"]
    bare = parse_config(raw)
    assert bare.rollout == rollout and bare.closed_loop == config.closed_loop


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("rollout", "canary_share"), 0, "rollout.canary_share"),
        (("rollout", "canary_share"), 1.5, "rollout.canary_share"),
        (("rollout", "method"), "wilcoxon", "rollout.method"),
        (("rollout", "confidence"), 1.0, "rollout.confidence"),
        (("rollout", "guardrails", "max_error_ratio"), -0.1, "rollout.guardrails.max_error_ratio"),
        (("closed_loop", "promotion"), "blue_green", "closed_loop.promotion"),
    ],
)
def test_rollout_values_are_checked_by_name(
    path: tuple[str, ...], value: object, message: str
) -> None:
    raw = _raw()
    section = raw
    for key in path[:-1]:
        section = section[key]
    section[path[-1]] = value
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, "config.yaml")


def test_misspelt_guardrail_is_named_with_a_suggestion() -> None:
    raw = _raw()
    raw["rollout"]["guardrails"]["max_eror_ratio"] = 0.1
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "config.yaml")
    assert str(err.value) == (
        "config.yaml: rollout.guardrails.max_eror_ratio: unknown key; "
        "did you mean 'max_error_ratio'?"
    )
