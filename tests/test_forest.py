"""The compiled forest gives the sklearn pipeline's answers, and refuses what it cannot compile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import ExtraTreesClassifier
from sklearn.pipeline import Pipeline

from churn.config import load_config
from churn.data import prepare_features
from churn.datagen import generate_customers
from churn.forest import (
    ForestPredictor,
    UnsupportedModel,
    float32_at_most,
    pack_forest,
)
from churn.inference import SklearnPredictor, frame_to_columns
from churn.pipeline import build_pipeline
from churn.risk import risk_tiers
from churn.schema import FeatureSchema
from tests.conftest import write_config

TARGET = "churned"


def fitted(tmp_path: Path, rows: int = 3000, **model: Any) -> tuple[Pipeline, FeatureSchema]:
    config = load_config(write_config(tmp_path, model=model))
    frame = generate_customers(rows, seed=5)
    features = prepare_features(frame, config.features.numeric, config.features.categorical)
    pipeline = build_pipeline(config).fit(features, frame[TARGET])
    names = [*config.features.numeric, *config.features.categorical]
    schema = FeatureSchema.from_dict(
        {
            "target": TARGET,
            "features": [
                {"name": n, "kind": "numeric" if n in config.features.numeric else "categorical"}
                for n in names
            ],
        }
    )
    return pipeline, schema


def awkward_customers(schema: FeatureSchema, rows: int = 2000) -> dict[str, list[Any]]:
    """Generated customers plus what serving meets: missing values of every feature, a
    category never seen in training, and categories with stray whitespace."""
    columns = frame_to_columns(generate_customers(rows, seed=9), schema)
    rng = np.random.default_rng(2)
    for name in schema.names:
        for i in rng.choice(rows, rows // 20, replace=False):
            columns[name][i] = None
    columns["contract_type"][1] = "Three year"
    columns["payment_method"][2] = "  Electronic check "
    columns["tenure"][3] = 10_000.0  # far outside anything seen
    return columns


def assert_same(pipeline: Pipeline, schema: FeatureSchema, columns: dict[str, list[Any]]) -> None:
    expected = SklearnPredictor(schema, pipeline).predict_proba(columns)
    got = ForestPredictor(schema, pipeline).predict_proba(columns)
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= 1e-12


def test_probabilities_equal_the_pipelines(tmp_path: Path) -> None:
    pipeline, schema = fitted(tmp_path, n_estimators=60, max_depth=8)
    columns = awkward_customers(schema)
    expected = SklearnPredictor(schema, pipeline).predict_proba(columns)
    got = ForestPredictor(schema, pipeline).predict_proba(columns)
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= 1e-12
    assert np.array_equal(risk_tiers(got, 0.75, 0.45), risk_tiers(expected, 0.75, 0.45))


@pytest.mark.parametrize("rows", [1, 7, 8, 9, 1001])
def test_any_number_of_rows(tmp_path: Path, rows: int) -> None:
    # rows are walked in groups of eight: partial groups must come out right too
    pipeline, schema = fitted(tmp_path, n_estimators=20, max_depth=6)
    assert_same(pipeline, schema, frame_to_columns(generate_customers(rows, seed=1), schema))


def test_unbalanced_trees_and_extra_trees(tmp_path: Path) -> None:
    # No depth limit: leaves at every level, padded in the complete layout.
    pipeline, schema = fitted(
        tmp_path, rows=400, n_estimators=15, max_depth=None, min_samples_leaf=3
    )
    forest = pipeline.named_steps["classifier"]
    depths = {e.tree_.max_depth for e in forest.estimators_}
    assert max(depths) > 8 and len(depths) > 1
    columns = awkward_customers(schema, 500)
    assert_same(pipeline, schema, columns)

    extra = ExtraTreesClassifier(n_estimators=25, max_depth=7, random_state=0)
    pipeline.steps[-1] = ("classifier", extra)
    frame = generate_customers(400, seed=5)
    pipeline.fit(prepare_features(frame, schema.numeric, schema.categorical), frame[TARGET])
    assert_same(pipeline, schema, columns)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ({"type": "gradient_boosting", "n_estimators": 10}, "not a random forest"),
        ({"type": "logistic_regression"}, "not a random forest"),
    ],
)
def test_other_models_are_refused(tmp_path: Path, model: dict[str, Any], reason: str) -> None:
    pipeline, schema = fitted(tmp_path, rows=500, **model)
    with pytest.raises(UnsupportedModel, match=reason):
        ForestPredictor(schema, pipeline)


def test_too_deep_a_forest_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, _ = fitted(tmp_path, rows=500, n_estimators=5, max_depth=6)
    monkeypatch.setattr("churn.forest.MAX_DEPTH", 4)
    with pytest.raises(UnsupportedModel, match="too large for the complete layout"):
        pack_forest(pipeline.named_steps["classifier"])


def test_a_changed_preprocessing_step_is_refused(tmp_path: Path) -> None:
    from sklearn.preprocessing import MinMaxScaler

    pipeline, schema = fitted(tmp_path, rows=500, n_estimators=5, max_depth=4)
    numeric = pipeline.named_steps["preprocess"].named_transformers_["numeric"]
    numeric.steps[1] = ("scale", MinMaxScaler().fit(np.zeros((2, len(schema.numeric)))))
    with pytest.raises(UnsupportedModel, match="MinMaxScaler"):
        ForestPredictor(schema, pipeline)


def test_threshold_rounding_keeps_every_comparison() -> None:
    rng = np.random.default_rng(0)
    thresholds = np.concatenate(
        [rng.normal(0, 3, 5000), rng.normal(0, 3, 5000).astype(np.float32).astype(np.float64)]
    )
    rounded = float32_at_most(thresholds)
    assert rounded.dtype == np.float32
    for x in (
        thresholds.astype(np.float32),
        np.nextafter(thresholds.astype(np.float32), np.float32(np.inf)),
        np.nextafter(thresholds.astype(np.float32), np.float32(-np.inf)),
    ):
        # what sklearn does (float32 feature promoted, float64 threshold) == the kernel's test
        assert np.array_equal(x.astype(np.float64) <= thresholds, x <= rounded)


def test_matrix_of_the_wrong_width_is_an_error(tmp_path: Path) -> None:
    pipeline, _ = fitted(tmp_path, rows=300, n_estimators=3, max_depth=3)
    packed = pack_forest(pipeline.named_steps["classifier"])
    with pytest.raises(ValueError, match="expected a"):
        packed.predict(np.zeros((4, packed.n_features + 1), dtype=np.float32))


def test_the_served_model_uses_the_forest(trained_model: Any) -> None:
    from churn.bundle import load_bundle

    bundle = load_bundle(trained_model.bundle_dir)
    frame = pd.read_csv(trained_model.config.data.train_path).head(3000)
    columns = frame_to_columns(frame, bundle.schema)
    expected = SklearnPredictor(bundle.schema, bundle.pipeline).predict_proba(columns)
    got = ForestPredictor(bundle.schema, bundle.pipeline).predict_proba(columns)
    assert np.max(np.abs(got - expected)) <= 1e-12


# ---------------------------------------------------------------------------- every backend

# What clients send besides clean values: padding (stripped, as training strips it), another
# case (a different label: scored as unknown by every backend), an unseen category, nulls.
AWKWARD = {
    "padded": {"internet_service": "Fiber optic ", "payment_method": "  Electronic check"},
    "mixed case": {"internet_service": "fiber OPTIC", "payment_method": "electronic check"},
    "unknown": {"internet_service": "Fibre", "payment_method": "Carrier pigeon"},
    "missing": {"internet_service": None, "monthly_charges": None, "contract_type": None},
}


def _backends(bundle: Any) -> dict[str, Any]:
    from churn.inference import OnnxPredictor

    assert bundle.onnx_bytes is not None, "the trained bundle must carry its ONNX export"
    return {
        "sklearn": SklearnPredictor(bundle.schema, bundle.pipeline),
        "onnx": OnnxPredictor(bundle.schema, bundle.onnx_bytes),
        "forest": ForestPredictor(bundle.schema, bundle.pipeline),
    }


@pytest.mark.parametrize("case", list(AWKWARD))
def test_every_backend_scores_awkward_input_alike(trained_model: Any, case: str) -> None:
    """sklearn, ONNX and the compiled forest get the same prepared input (churn.data.
    prepare_columns), so they give the same probability and tier on padded, mixed-case,
    unknown and missing values (before, ONNX kept the padding and scored 0.62 MEDIUM where
    the others scored 0.86 HIGH)."""
    from churn.bundle import load_bundle

    bundle = load_bundle(trained_model.bundle_dir)
    frame = pd.read_csv(trained_model.config.data.train_path).head(200)
    clean = frame_to_columns(frame, bundle.schema)
    awkward = {name: list(values) for name, values in clean.items()}
    for name, value in AWKWARD[case].items():
        awkward[name] = [value] * len(frame)
    answers = {name: p.predict_proba(awkward) for name, p in _backends(bundle).items()}
    expected = answers["sklearn"]
    for name, got in answers.items():
        assert np.max(np.abs(got - expected)) < 1e-4, name  # ONNX computes in float32
        assert np.array_equal(risk_tiers(got, 0.75, 0.45), risk_tiers(expected, 0.75, 0.45)), name
    if case == "padded":  # padding is no change at all
        stripped = {
            **awkward,
            **{n: [str(v).strip()] * len(frame) for n, v in AWKWARD[case].items()},
        }
        assert np.array_equal(
            answers["forest"], _backends(bundle)["forest"].predict_proba(stripped)
        )
    if case in ("mixed case", "unknown"):  # both are unseen labels: scored the same way
        other = "unknown" if case == "mixed case" else "mixed case"
        relabelled = {**awkward, **{n: [v] * len(frame) for n, v in AWKWARD[other].items()}}
        assert np.array_equal(
            answers["forest"], _backends(bundle)["forest"].predict_proba(relabelled)
        )
