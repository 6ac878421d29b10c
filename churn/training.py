"""Training: validate, fit, evaluate, log to MLflow, register, export the candidate bundle.

`train()` is the recipe `train.py` runs; every step is a function the tests call directly.
"""

from __future__ import annotations

import contextlib
import platform
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from churn.bundle import save_bundle
from churn.calibration import Calibrator, fit_calibrator
from churn.config import Config
from churn.data import TrainingData, load_training_data
from churn.explain import (
    GLOBAL_ROWS,
    GlobalImportance,
    NotExplainable,
    categorical_profile,
    global_importance,
    make_explainer,
)
from churn.forest import check_compiled_forest
from churn.onnx_export import OnnxExport, export_onnx
from churn.pipeline import build_classifier, build_pipeline, inference_ready
from churn.profile import build_reference_profile, validation_sample
from churn.registry import BUNDLE_ARTIFACT_PATH, tracking_to
from churn.schema import FeatureSchema

Progress = Callable[[str], None]

# Types skops must be told to trust when MLflow reloads the logged model. Named one by one:
# trusting everything would make skops as unsafe as pickle.
SKOPS_TRUSTED_TYPES = [
    "sklearn.tree._tree.Tree",
    "numpy.dtype",
]


@dataclass(frozen=True)
class Split:
    X_train: pd.DataFrame
    X_val: pd.DataFrame
    y_train: pd.Series
    y_val: pd.Series


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_name: str
    model_version: str
    metrics: dict[str, float]
    bundle_path: Path
    onnx: OnnxExport
    seconds: float


def split(data: TrainingData, config: Config) -> Split:
    X_train, X_val, y_train, y_val = train_test_split(
        data.features,
        data.target,
        test_size=config.training.val_size,
        random_state=config.training.random_state,
        stratify=data.target,
    )
    return Split(X_train, X_val, y_train, y_val)


def evaluate(y_true: np.ndarray, probability: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = (probability >= threshold).astype(int)
    clipped = np.clip(probability, 1e-7, 1 - 1e-7)
    return {
        "val_auc": float(roc_auc_score(y_true, probability)),
        "val_pr_auc": float(average_precision_score(y_true, probability)),
        "val_precision": float(precision_score(y_true, predicted, zero_division=0)),
        "val_recall": float(recall_score(y_true, predicted, zero_division=0)),
        "val_f1": float(f1_score(y_true, predicted, zero_division=0)),
        "val_log_loss": float(log_loss(y_true, clipped)),
        "val_brier": float(brier_score_loss(y_true, probability)),
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in (
        "scikit-learn",
        "numpy",
        "pandas",
        "scipy",
        "joblib",
        "mlflow",
        "skl2onnx",
        "onnxruntime",
    ):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


# Execution knobs, not hyper-parameters: they change how fast a model trains, never what it is.
_NOT_HYPERPARAMETERS = {"n_jobs"}
# Short forms for run names: random_forest-d8-n200-leaf5-<data digest>.
_RUN_NAME_KEYS = {
    "max_depth": "d",
    "n_estimators": "n",
    "min_samples_leaf": "leaf",
    "learning_rate": "lr",
    "C": "C",
}


def applicable_model_params(config: Config) -> dict[str, Any]:
    """The `model.*` settings the chosen classifier really uses, with the values it got.

    Read back from the classifier `build_classifier` makes (the one place that decides which
    setting applies to which type), so a random forest logs no `learning_rate` or `C`, and a
    gradient-boosting `max_depth: null` logs the 3 it actually trains with.
    """
    used = build_classifier(config.model, config.training.random_state).get_params()
    return {
        name: used[name]
        for name in type(config.model).model_fields
        if name in used and name not in _NOT_HYPERPARAMETERS
    }


def _model_params(config: Config) -> dict[str, Any]:
    params: dict[str, Any] = {"model.type": config.model.type}
    params.update({f"model.{k}": v for k, v in applicable_model_params(config).items()})
    params.update(
        {
            "training.val_size": config.training.val_size,
            "training.random_state": config.training.random_state,
            "features.numeric": ",".join(config.features.numeric),
            "features.categorical": ",".join(config.features.categorical),
            "data.target_column": config.data.target_column,
        }
    )
    return params


def run_name(config: Config, data_digest: str) -> str:
    """A name that says what was trained on what: `random_forest-d8-n200-leaf5-1a2b3c4d`."""
    applied = applicable_model_params(config)
    parts: list[str] = [config.model.type]
    parts += [
        f"{short}{applied[key]}"
        for key, short in _RUN_NAME_KEYS.items()
        if applied.get(key) is not None
    ]
    return "-".join([*parts, data_digest[:8]])


def build_metadata(
    *,
    config: Config,
    data: TrainingData,
    schema: FeatureSchema,
    parts: Split,
    metrics: dict[str, float],
    val_probability: np.ndarray,
    run_id: str,
    version: str,
    onnx: OnnxExport,
    compiled_forest: dict[str, Any] | None = None,
    calibrator: Calibrator | None = None,
    explanations: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything serving and monitoring need to know about the model, without the raw data."""
    reference = build_reference_profile(
        parts.X_train,
        schema.numeric,
        schema.categorical,
        val_probability,
        sample_size=config.export.profile_sample_size,
        seed=config.training.random_state,
    )
    # Validation rows with their predictions and labels: the baseline against which the
    # monitoring job judges whether a segment's calibration gap has changed.
    reference["validation"] = validation_sample(
        parts.X_val, val_probability, parts.y_val.to_numpy(), seed=config.training.random_state
    )
    return {
        "model_name": config.mlflow.model_name,
        "model_version": version,
        "run_id": run_id,
        "model_type": config.model.type,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "library_versions": library_versions(),
        "params": _model_params(config),
        "feature_schema": schema.to_dict(),
        "metrics": metrics,
        "risk": config.risk.model_dump(),
        "gate": config.gate.model_dump(),
        "target_column": config.data.target_column,
        "onnx": onnx.as_metadata(),
        "compiled_forest": compiled_forest or {"supported": False, "reason": "not checked"},
        # global importances from per-prediction explanations (GET /model shows them)
        "explanations": explanations or {"available": False, "reason": "not computed"},
        "training_data": {
            "path": str(data.path),
            "digest": data.digest,
            "rows": len(data.features),
            "train_rows": len(parts.X_train),
            "val_rows": len(parts.X_val),
            "churn_rate": float(data.target.mean()),
            "dropped_unlabelled": data.dropped_unlabelled,
            "snapshot": datetime.fromtimestamp(data.path.stat().st_mtime, UTC).date().isoformat(),
        },
        "calibration": (calibrator or Calibrator("identity")).as_metadata(),
        "monitoring": config.monitoring.model_dump(),
        "reference_profile": reference,
    }


def _log_evaluation(
    pipeline: Pipeline, parts: Split, probability: np.ndarray, config: Config
) -> None:
    """Evaluation plots, and importance per original feature as a plot, a CSV and JSON."""
    import mlflow

    from churn import plots
    from churn.importance import feature_importance, importance_table

    y_val = parts.y_val.to_numpy()
    figures = plots.evaluation_figures(y_val, probability, config.risk.decision_threshold)
    importance = feature_importance(
        pipeline,
        parts.X_val,
        y_val,
        list(config.features.numeric),
        list(config.features.categorical),
        seed=config.training.random_state,
    )
    figures["feature_importance.png"] = plots.feature_importance_figure(importance)
    for name, fig in figures.items():
        mlflow.log_figure(fig, f"plots/{name}")
    plots.close(figures)
    table = importance_table(importance)
    mlflow.log_text(table.to_csv(index=False), "feature_importance.csv")
    mlflow.log_dict({"features": table.to_dict(orient="records")}, "feature_importance.json")


def explain_validation(
    pipeline: Pipeline, schema: FeatureSchema, parts: Split, config: Config
) -> tuple[GlobalImportance | None, dict[str, Any]]:
    """Per-customer contributions on a sample of the validation split (churn.explain) and
    what the bundle keeps of them; a model that cannot be explained is noted, not an error."""
    try:
        explainer = make_explainer(pipeline, schema, categorical_profile(parts.X_train, schema))
        summary = global_importance(explainer, parts.X_val, seed=config.training.random_state)
    except NotExplainable as exc:
        return None, {"available": False, "reason": str(exc)}
    return summary, summary.as_metadata()


def _log_explanations(summary: GlobalImportance) -> None:
    """The SHAP summary plot and the mean-|contribution| table (CSV and JSON)."""
    import mlflow

    from churn import plots

    figure = plots.shap_summary_figure(
        summary.explanations.features, summary.explanations.contributions, summary.values
    )
    mlflow.log_figure(figure, "plots/shap_summary.png")
    plots.close({"shap_summary.png": figure})
    table = pd.DataFrame(summary.table())
    mlflow.log_text(table.to_csv(index=False), "shap_importance.csv")
    mlflow.log_dict(
        {
            "method": summary.explanations.method,
            "base_value": summary.explanations.base_value,
            "rows": len(summary.explanations),
            "features": table.to_dict(orient="records"),
        },
        "shap_importance.json",
    )


def model_signature(
    schema: FeatureSchema, training_features: pd.DataFrame, output: np.ndarray
) -> Any:
    """An MLflow signature that accepts what callers send, nulls included.

    Every feature may be null (the pipeline imputes each one). Integer-valued numeric
    features are declared `Any`: MLflow's column types cannot hold both the int64 a caller
    sends ({"tenure": 3}) and the float64-with-NaN pandas reads from a CSV with blanks (a
    `long` column refuses the NaN, a `double` column refuses int64). Other numerics are
    `double`, categoricals `string`.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, DataType, Schema, TensorSpec

    columns: list[ColSpec | TensorSpec] = []
    for spec in schema.features:
        if spec.kind == "categorical":
            columns.append(ColSpec(DataType.string, spec.name))
        elif spec.integer or _integer_valued(training_features[spec.name]):
            columns.append(ColSpec(AnyType(), spec.name))
        else:
            columns.append(ColSpec(DataType.double, spec.name))
    outputs = Schema([TensorSpec(np.dtype(output.dtype), (-1, output.shape[1]))])
    return ModelSignature(inputs=Schema(columns), outputs=outputs)


def _integer_valued(column: pd.Series) -> bool:
    known = pd.to_numeric(column, errors="coerce").dropna()
    return bool(len(known)) and bool((known == np.round(known)).all())


def candidate_bundle_dir(config: Config, version: str) -> Path:
    """Where training exports version `version`: never a directory anything serves from.

    `export.artifacts_dir` belongs to promotion (what is served is what was promoted).
    """
    return config.export.candidates_dir / f"v{version}"


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


# MLflow 3's UI opens an experiment in its GenAI view (traces, "No data available") unless
# the experiment says it is classic model development: this is the tag and value the UI sets
# itself when you pick "Machine learning" (mlflow/server/js: ExperimentKind).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


@contextlib.contextmanager
def _start_run(experiment_name: str, name: str) -> Iterator[Any]:
    import mlflow

    experiment = mlflow.set_experiment(experiment_name)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        mlflow.MlflowClient().set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
        )
    with mlflow.start_run(run_name=name) as run:
        yield run


def train(
    config: Config, config_path: Path | None = None, progress: Progress | None = None
) -> TrainResult:
    """Run the whole recipe. Data is validated before MLflow is touched."""
    import mlflow

    started = time.perf_counter()
    _say(progress, f"load      reading {config.data.train_path}")
    data = load_training_data(config)
    _say(
        progress,
        f"validate  {len(data.features):,} rows, {len(config.features.all)} features, "
        f"churn rate {data.target.mean():.1%}"
        + (
            f", {data.dropped_unlabelled} unlabelled rows dropped"
            if data.dropped_unlabelled
            else ""
        ),
    )
    schema = FeatureSchema.from_training(config, data.features)
    parts = split(data, config)

    _say(progress, f"fit       {config.model.type} on {len(parts.X_train):,} rows")
    pipeline = build_pipeline(config).fit(parts.X_train, parts.y_train)
    inference_ready(pipeline)

    _say(progress, f"evaluate  on {len(parts.X_val):,} validation rows")
    val_probability = pipeline.predict_proba(parts.X_val)[:, 1]
    metrics = evaluate(parts.y_val.to_numpy(), val_probability, config.risk.decision_threshold)
    calibrator = fit_calibrator(
        val_probability, parts.y_val.to_numpy(), seed=config.training.random_state
    )
    metrics["calibration_ece_raw"] = float(calibrator.ece_before or 0.0)
    metrics["calibration_ece"] = float(calibrator.ece_after or 0.0)
    onnx = (
        export_onnx(pipeline, schema, parts.X_val, config.export, config.risk)
        if config.export.onnx
        else OnnxExport(None, None, None, "disabled in config")
    )
    if onnx.max_abs_diff is not None:
        metrics["onnx_max_abs_diff"] = onnx.max_abs_diff
        metrics["onnx_tier_agreement"] = onnx.tier_agreement or 0.0
    forest = check_compiled_forest(pipeline, schema, parts.X_val, val_probability)
    if forest["max_abs_diff"] is not None:
        metrics["forest_max_abs_diff"] = forest["max_abs_diff"]
    _say(progress, f"explain   contributions on up to {GLOBAL_ROWS:,} validation rows")
    explained, explanations = explain_validation(pipeline, schema, parts, config)

    tracking_uri = config.tracking_uri
    _say(
        progress, f"log       MLflow at {tracking_uri}, experiment {config.mlflow.experiment_name}"
    )
    with (
        tracking_to(tracking_uri),
        _start_run(config.mlflow.experiment_name, run_name(config, data.digest)) as run,
        warnings.catch_warnings(),
    ):
        # MLflow's hints about integer columns and ambiguous local sources are noise here:
        # the signature is inferred from real validation rows and the source is a local file.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\..*")
        commit = git_commit()
        mlflow.set_tags(
            {
                "git_commit": commit or "unknown",
                "mlflow.source.git.commit": commit or "",
                "model_type": config.model.type,
            }
        )
        mlflow.log_params(_model_params(config))
        mlflow.log_metrics(metrics)
        if config_path is not None and config_path.exists():
            mlflow.log_artifact(str(config_path), artifact_path="config")
        full = parts.X_train.assign(**{config.data.target_column: parts.y_train})
        from mlflow.data.pandas_dataset import from_pandas

        dataset = from_pandas(
            full,
            source=str(data.path),
            targets=config.data.target_column,
            name=data.path.name,
            digest=data.digest[:32],
        )
        mlflow.log_input(dataset, context="training")
        _log_evaluation(pipeline, parts, val_probability, config)
        if explained is not None:
            _log_explanations(explained)

        example = parts.X_val.head(5)
        signature = model_signature(schema, parts.X_train, pipeline.predict_proba(example))
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=signature,
            input_example=example,
            registered_model_name=config.mlflow.model_name,
            pyfunc_predict_fn="predict_proba",
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
        )
        version = str(info.registered_model_version)

        candidate_dir = candidate_bundle_dir(config, version)
        _say(
            progress,
            f"export    candidate bundle v{version} to {candidate_dir}/ (ONNX: {onnx.reason})",
        )
        metadata = build_metadata(
            config=config,
            data=data,
            schema=schema,
            parts=parts,
            metrics=metrics,
            val_probability=val_probability,
            run_id=run.info.run_id,
            version=version,
            onnx=onnx,
            compiled_forest=forest,
            calibrator=calibrator,
            explanations=explanations,
        )
        # A fresh directory: files of an older bundle with the same number (a registry that
        # was reset) must not ride along into the run's bundle/ artifacts.
        shutil.rmtree(candidate_dir, ignore_errors=True)
        bundle_path = save_bundle(candidate_dir, pipeline, metadata, onnx.onnx_bytes)
        mlflow.log_artifacts(str(candidate_dir), artifact_path=BUNDLE_ARTIFACT_PATH)

    return TrainResult(
        run_id=run.info.run_id,
        model_name=config.mlflow.model_name,
        model_version=version,
        metrics=metrics,
        bundle_path=bundle_path,
        onnx=onnx,
        seconds=time.perf_counter() - started,
    )


def print_progress(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)
