"""Training end to end on a small real model: bundle, MLflow records, determinism, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import joblib
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sklearn.model_selection import train_test_split

from churn.bundle import BundleError, load_bundle, sha256_file
from churn.config import load_config
from churn.data import load_training_data
from churn.datagen import bayes_optimal_auc, generate_customers, generate_with_truth
from churn.inference import OnnxPredictor, SklearnPredictor, frame_to_columns
from churn.pipeline import build_pipeline, inference_ready
from churn.registry import tracking_to
from churn.training import applicable_model_params, evaluate, run_name, split
from tests.conftest import ROOT, TrainedModel, write_config

CUSTOMER = {
    "tenure": 3.0,
    "monthly_charges": 95.0,
    "total_charges": 285.0,
    "num_products": 1.0,
    "contract_type": "Month-to-month",
    "payment_method": "Electronic check",
    "internet_service": "Fiber optic",
}


def test_bundle_files_and_checksums(trained_model: TrainedModel) -> None:
    meta = json.loads((trained_model.bundle_dir / "metadata.json").read_text())
    assert meta["model_name"] == "churn-classifier"
    assert meta["model_version"] == trained_model.result.model_version
    assert meta["run_id"] == trained_model.result.run_id
    for name, digest in meta["files"].items():
        assert sha256_file(trained_model.bundle_dir / name) == digest
    assert {"model.pkl", "model.onnx"} <= set(meta["files"])
    assert meta["onnx"]["exported"] and meta["onnx"]["max_abs_diff"] <= 0.01
    assert meta["onnx"]["tier_agreement"] >= 0.999
    assert meta["compiled_forest"]["supported"] and meta["compiled_forest"]["max_abs_diff"] <= 1e-9
    assert {"scikit-learn", "numpy", "python"} <= set(meta["library_versions"])
    schema = {f["name"]: f for f in meta["feature_schema"]["features"]}
    assert schema["num_products"]["integer"] and schema["num_products"]["max"] == 10
    assert schema["contract_type"]["allowed"] == ["Month-to-month", "One year", "Two year"]
    assert schema["tenure"]["observed_max"] <= 72
    assert meta["training_data"]["rows"] == 4000 and len(meta["training_data"]["digest"]) == 64
    assert set(meta["reference_profile"]) >= {"numeric", "categorical"}
    assert 0.5 < meta["metrics"]["val_auc"] <= 1.0


def test_model_pkl_is_a_plain_joblib_pipeline(trained_model: TrainedModel) -> None:
    pipeline = joblib.load(trained_model.model_path)
    proba = pipeline.predict_proba(pd.DataFrame([CUSTOMER]))
    assert proba.shape == (1, 2)
    unseen = pipeline.predict_proba(pd.DataFrame([{**CUSTOMER, "payment_method": "Bitcoin"}]))
    assert unseen.shape == (1, 2) and np.isfinite(unseen).all()


def test_onnx_and_sklearn_agree(trained_model: TrainedModel) -> None:
    bundle = load_bundle(trained_model.model_path)
    frame = generate_customers(500, seed=99).drop(columns="churned")
    columns = frame_to_columns(frame, bundle.schema)
    assert bundle.onnx_bytes is not None
    onnx_p = OnnxPredictor(bundle.schema, bundle.onnx_bytes).predict_proba(columns)
    sk_p = SklearnPredictor(bundle.schema, bundle.pipeline).predict_proba(columns)
    assert np.max(np.abs(onnx_p - sk_p)) < 0.01


def test_tampered_bundle_is_refused_before_unpickling(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    copy.mkdir()
    for f in trained_model.bundle_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "model.pkl").write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(BundleError, match=r"model.pkl: SHA-256 mismatch"):
        load_bundle(copy / "model.pkl")
    (copy / "model.pkl").write_bytes(trained_model.model_path.read_bytes())
    load_bundle(copy)  # intact again
    (copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"model.onnx: file listed in metadata is missing"):
        load_bundle(copy)
    (copy / "metadata.json").unlink()
    with pytest.raises(BundleError, match="metadata file not found"):
        load_bundle(copy)


def test_mlflow_run_has_everything(trained_model: TrainedModel) -> None:
    client = MlflowClient(
        tracking_uri=trained_model.tracking_uri, registry_uri=trained_model.tracking_uri
    )
    run = client.get_run(trained_model.result.run_id)
    metrics = run.data.metrics
    for key in (
        "val_auc",
        "val_pr_auc",
        "val_precision",
        "val_recall",
        "val_f1",
        "val_log_loss",
        "val_brier",
    ):
        assert key in metrics
    assert run.data.params["model.n_estimators"] == "30"
    assert run.data.tags.get("git_commit")
    assert run.info.run_name.startswith("random_forest-d8-n30-leaf5-")
    assert run.info.run_name.endswith(_data_digest(trained_model)[:8])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {
        f"plots/{n}"
        for n in (
            "roc_curve.png",
            "precision_recall_curve.png",
            "calibration_curve.png",
            "confusion_matrix.png",
            "feature_importance.png",
            "shap_summary.png",
        )
    }
    assert [a.path for a in client.list_artifacts(run.info.run_id, "config")] == [
        "config/config.yaml"
    ]
    bundle_files = {a.path for a in client.list_artifacts(run.info.run_id, "bundle")}
    assert {"bundle/model.pkl", "bundle/metadata.json"} <= bundle_files
    assert run.inputs.dataset_inputs, "the training data set is logged as a run input"
    assert run.inputs.dataset_inputs[0].dataset.digest
    version = client.get_model_version("churn-classifier", trained_model.result.model_version)
    assert version.run_id == run.info.run_id
    with tracking_to(trained_model.tracking_uri):
        model = mlflow.sklearn.load_model(f"models:/churn-classifier/{version.version}")
    assert model.predict_proba(pd.DataFrame([CUSTOMER])).shape == (1, 2)


def _data_digest(trained_model: TrainedModel) -> str:
    meta = json.loads((trained_model.bundle_dir / "metadata.json").read_text())
    return str(meta["training_data"]["digest"])


def test_experiment_opens_as_model_training_in_the_mlflow_ui(trained_model: TrainedModel) -> None:
    """MLflow 3's UI shows runs, not the GenAI traces view, for a tagged experiment."""
    client = MlflowClient(tracking_uri=trained_model.tracking_uri)
    experiment = client.get_experiment_by_name(trained_model.config.mlflow.experiment_name)
    assert experiment is not None
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_only_the_parameters_the_model_type_uses_are_logged(trained_model: TrainedModel) -> None:
    client = MlflowClient(tracking_uri=trained_model.tracking_uri)
    params = client.get_run(trained_model.result.run_id).data.params
    assert {"model.type", "model.n_estimators", "model.max_depth", "model.min_samples_leaf"} <= (
        set(params)
    )
    assert not {"model.learning_rate", "model.C", "model.n_jobs"} & set(params)


@pytest.mark.parametrize(
    ("model", "logged", "absent", "name"),
    [
        (
            {"type": "gradient_boosting", "max_depth": None, "learning_rate": 0.2},
            {"max_depth": 3, "learning_rate": 0.2, "n_estimators": 30},
            {"C", "class_weight"},
            "gradient_boosting-d3-n30-leaf5-lr0.2-",
        ),
        (
            {"type": "logistic_regression", "C": 0.5},
            {"C": 0.5, "class_weight": None},
            {"n_estimators", "max_depth", "learning_rate", "min_samples_leaf"},
            "logistic_regression-C0.5-",
        ),
    ],
)
def test_params_and_run_name_follow_the_model_type(
    tmp_path: Path, model: dict, logged: dict, absent: set, name: str
) -> None:
    config = load_config(write_config(tmp_path, model=model))
    applied = applicable_model_params(config)
    assert {k: applied[k] for k in logged} == logged
    assert not absent & set(applied)
    assert run_name(config, "abcdef0123456789").startswith(name)
    assert run_name(config, "abcdef0123456789").endswith("-abcdef01")


def test_importance_is_per_original_feature_with_a_direction(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    client = MlflowClient(tracking_uri=trained_model.tracking_uri)
    path = client.download_artifacts(
        trained_model.result.run_id, "feature_importance.csv", str(tmp_path)
    )
    table = pd.read_csv(path).set_index("feature")
    assert set(table.index) == set(trained_model.config.features.all)
    assert list(table["importance"]) == sorted(table["importance"], reverse=True)
    # The generator's truth: longer tenure lowers the risk, higher charges raise it.
    assert table.loc["tenure", "direction"] == -1
    assert table.loc["tenure", "signed_importance"] < 0
    assert table.loc["monthly_charges", "direction"] == 1
    assert table.loc["contract_type", "effect"] == ("riskiest: Month-to-month; safest: Two year")
    assert table.loc["tenure", "importance"] > 0.01
    as_json = client.download_artifacts(
        trained_model.result.run_id, "feature_importance.json", str(tmp_path)
    )
    assert len(json.loads(Path(as_json).read_text())["features"]) == len(table)


def test_pyfunc_scores_what_callers_send_without_casting(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    """The README's example row (ints) and a frame read from the training CSV (with blanks)."""
    with tracking_to(trained_model.tracking_uri):
        model = mlflow.pyfunc.load_model(
            f"models:/churn-classifier/{trained_model.result.model_version}"
        )
    readme_row = pd.DataFrame(
        [
            {
                "tenure": 3,
                "monthly_charges": 95.5,
                "total_charges": 286.5,
                "num_products": 1,
                "contract_type": "Month-to-month",
                "payment_method": "Electronic check",
                "internet_service": "Fiber optic",
            }
        ]
    )
    assert readme_row["tenure"].dtype == np.int64
    answer = np.asarray(model.predict(readme_row))
    assert answer.shape == (1, 2) and 0.0 <= answer[0, 1] <= 1.0

    raw = pd.read_csv(trained_model.config.data.train_path)
    assert raw["total_charges"].isna().any() and raw["payment_method"].isna().any()
    _pyfunc_agrees_with_pipeline(model, raw, trained_model)

    # An export whose integer columns are written as integers, some of them blank.
    exported = raw.assign(
        tenure=raw["tenure"].round().astype("Int64"),
        num_products=raw["num_products"].round().astype("Int64"),
    )
    exported.loc[::50, "tenure"] = pd.NA
    exported.loc[::70, "num_products"] = pd.NA
    path = tmp_path / "export.csv"
    exported.to_csv(path, index=False)
    with_blanks = pd.read_csv(path)
    assert with_blanks["tenure"].isna().any() and with_blanks["tenure"].dtype == np.float64
    _pyfunc_agrees_with_pipeline(model, with_blanks, trained_model)
    complete = pd.read_csv(path).dropna(subset=["tenure", "num_products"])
    complete.astype({"tenure": int, "num_products": int}).to_csv(path, index=False)
    as_ints = pd.read_csv(path)
    assert as_ints["tenure"].dtype == np.int64 and as_ints["num_products"].dtype == np.int64
    _pyfunc_agrees_with_pipeline(model, as_ints, trained_model)


def _pyfunc_agrees_with_pipeline(model, frame: pd.DataFrame, trained_model: TrainedModel) -> None:
    features = frame.drop(columns="churned")
    scored = np.asarray(model.predict(features))
    assert scored.shape == (len(frame), 2) and np.isfinite(scored).all()
    direct = joblib.load(trained_model.model_path).predict_proba(features)
    np.testing.assert_allclose(scored, direct)


def test_same_config_same_data_same_predictions(tmp_path: Path) -> None:
    generate_customers(2000, seed=4).to_csv(tmp_path / "churn_train.csv", index=False)
    config = load_config(write_config(tmp_path))

    def fit_and_predict() -> np.ndarray:
        parts = split(load_training_data(config), config)
        pipeline = inference_ready(build_pipeline(config).fit(parts.X_train, parts.y_train))
        return np.asarray(pipeline.predict_proba(parts.X_val))

    np.testing.assert_array_equal(fit_and_predict(), fit_and_predict())


@pytest.mark.parametrize("model_type", ["gradient_boosting", "logistic_regression"])
def test_other_classifiers_train(tmp_path: Path, model_type: str) -> None:
    generate_customers(1500, seed=8).to_csv(tmp_path / "churn_train.csv", index=False)
    config = load_config(write_config(tmp_path, model={"type": model_type, "n_estimators": 20}))
    parts = split(load_training_data(config), config)
    pipeline = build_pipeline(config).fit(parts.X_train, parts.y_train)
    metrics = evaluate(parts.y_val.to_numpy(), pipeline.predict_proba(parts.X_val)[:, 1], 0.5)
    assert metrics["val_auc"] > 0.8


def test_longer_tenure_does_not_raise_risk(trained_model: TrainedModel) -> None:
    pipeline = joblib.load(trained_model.model_path)
    rows = pd.DataFrame([{**CUSTOMER, "tenure": t, "total_charges": 95.0 * t} for t in (1, 24, 60)])
    p = pipeline.predict_proba(rows)[:, 1]
    assert p[0] >= p[1] >= p[2]
    contracts = pd.DataFrame(
        [{**CUSTOMER, "contract_type": c} for c in ("Month-to-month", "Two year")]
    )
    q = pipeline.predict_proba(contracts)[:, 1]
    assert q[0] > q[1]


@pytest.mark.slow
def test_default_model_is_near_bayes_optimal(tmp_path: Path) -> None:
    """The full default config on 50,000 rows: gate cleared, within 0.02 of the Bayes AUC."""
    frame, truth = generate_with_truth(50_000, seed=42)
    frame.to_csv(tmp_path / "churn_train.csv", index=False)
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    config_path = write_config(tmp_path, model=raw["model"])
    config = load_config(config_path)
    data = load_training_data(config)
    parts = split(data, config)
    pipeline = build_pipeline(config).fit(parts.X_train, parts.y_train)
    auc = evaluate(parts.y_val.to_numpy(), pipeline.predict_proba(parts.X_val)[:, 1], 0.5)[
        "val_auc"
    ]
    _, val_idx = train_test_split(
        np.arange(len(frame)), test_size=0.2, random_state=42, stratify=frame["churned"]
    )
    bayes = bayes_optimal_auc(truth[val_idx], frame["churned"].to_numpy()[val_idx])
    assert auc >= config.gate.min_val_auc
    assert auc >= bayes - 0.02, f"val AUC {auc:.4f} vs Bayes-optimal {bayes:.4f}"


def _run_train(config_path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config", str(config_path)],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_bad_config_exits_2_and_logs_nothing(tmp_path: Path) -> None:
    generate_customers(300, seed=3).to_csv(tmp_path / "churn_train.csv", index=False)
    path = write_config(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["features"]["categorical"][1] = "payment_methd"
    path.write_text(yaml.safe_dump(raw))
    result = _run_train(path, tmp_path)
    assert result.returncode == 2
    assert "features.categorical names 'payment_methd', which is not a column" in result.stderr
    assert "did you mean 'payment_method'?" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists(), "nothing may be logged to MLflow"
    assert not (tmp_path / "artifacts").exists()

    raw["features"]["categorical"][1] = "payment_method"
    raw["model"]["max_dept"] = 3
    path.write_text(yaml.safe_dump(raw))
    result = _run_train(path, tmp_path)
    assert result.returncode == 2
    assert "model.max_dept: unknown key; did you mean 'max_depth'?" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_cli_trains_and_reports(tmp_path: Path) -> None:
    generate_customers(1500, seed=3).to_csv(tmp_path / "churn_train.csv", index=False)
    result = _run_train(write_config(tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
    for step in ("load", "validate", "fit", "evaluate", "log", "export"):
        assert f"[train] {step}" in result.stderr
    assert "trained churn-classifier v1" in result.stdout
    # A candidate: training never writes artifacts/, which only promotion fills.
    assert (tmp_path / "candidates" / "v1" / "model.pkl").exists()
    assert not (tmp_path / "artifacts").exists()
