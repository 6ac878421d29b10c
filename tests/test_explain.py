"""Per-prediction explanations (churn.explain, ?explain=true): exact, additive, per original
feature, agreeing with a brute-force Shapley computation, in plain words, and refused (4xx)
where they cannot be given."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline

from app.main import create_app
from churn.bundle import load_bundle, read_metadata, save_bundle
from churn.config import Config, ModelConfig, load_config
from churn.data import prepare_features
from churn.datagen import generate_customers
from churn.explain import (
    CHECK_TOLERANCE,
    Explanations,
    ForestExplainer,
    NotExplainable,
    categorical_profile,
    checked_explainer,
    feature_label,
    make_explainer,
    reason,
)
from churn.inference import SklearnPredictor, frame_to_columns, sample_rows
from churn.pipeline import build_pipeline
from churn.prediction_log import read_predictions
from churn.schema import FeatureSchema
from churn.training import train
from tests.api_support import CUSTOMER, make_settings, metric_value, wait_until
from tests.conftest import ROOT, TrainedModel, write_config

MODEL_TYPES: tuple[str, ...] = get_args(ModelConfig.model_fields["type"].annotation)
ADDITIVE = 1e-6


@pytest.fixture(scope="module")
def data() -> tuple[Config, pd.DataFrame, pd.Series, FeatureSchema]:
    config = load_config(ROOT / "config.yaml")
    raw = generate_customers(2500, seed=5)
    features = prepare_features(raw, config.features.numeric, config.features.categorical)
    schema = FeatureSchema.from_training(config, features)
    return config, features, raw[config.data.target_column], schema


def _fit(
    data: tuple[Config, pd.DataFrame, pd.Series, FeatureSchema], kind: str, **model: Any
) -> Pipeline:
    config, features, target, _ = data
    settings = {"type": kind, "n_estimators": 25, "max_depth": 6, **model}
    changed = config.model_copy(update={"model": config.model.model_copy(update=settings)})
    return build_pipeline(changed).fit(features, target)


def _awkward_rows(frame: pd.DataFrame, schema: FeatureSchema) -> dict[str, list[Any]]:
    """Validation-like rows plus what clients send: missing values, unknown and padded
    categories, values outside the training range."""
    columns = frame_to_columns(frame.head(150), schema)
    columns["tenure"][:5] = [None, 0.0, 500.0, None, 3.0]
    columns["monthly_charges"][5:8] = [None, 1e4, 0.0]
    columns["contract_type"][8:11] = [None, " One year ", "Month-to-month"]
    columns["internet_service"][11:14] = ["Satellite", None, "DSL"]
    return columns


# ---------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("kind", MODEL_TYPES)
def test_contributions_add_up_to_the_pipelines_probability(
    data: tuple[Config, pd.DataFrame, pd.Series, FeatureSchema], kind: str
) -> None:
    """Every model type the config offers: base + sum(contributions) == predict_proba within
    1e-6, on awkward rows too; one contribution per ORIGINAL feature."""
    config, features, _, schema = data
    pipeline = _fit(data, kind)
    explainer = make_explainer(pipeline, schema, categorical_profile(features, schema))
    sklearn = SklearnPredictor(schema, pipeline)
    prepared = sklearn.prepare(_awkward_rows(features, schema))
    expected = sklearn.predict_prepared(prepared)
    explained = explainer.explain(prepared)

    assert explained.features == tuple(config.features.all)
    assert explained.contributions.shape == (150, len(config.features.all))
    total = explained.base_value + explained.contributions.sum(axis=1)
    assert np.max(np.abs(total - expected)) <= ADDITIVE
    assert np.max(np.abs(explained.probabilities - expected)) <= ADDITIVE
    assert 0.0 < explained.base_value < 1.0
    # not a degenerate split: several features matter for these rows
    assert (np.abs(explained.contributions).mean(axis=0) > 1e-4).sum() >= 3


def test_categorical_contribution_is_the_feature_as_one_player(
    data: tuple[Config, pd.DataFrame, pd.Series, FeatureSchema],
) -> None:
    """Changing only the contract changes the probability by exactly the change in the sum
    of contributions, and a logistic regression's contract contribution is the one-hot
    weights of the customer's contract minus their training mean (one feature, one value)."""
    _, features, _, schema = data
    pipeline = _fit(data, "logistic_regression")
    explainer = make_explainer(pipeline, schema, categorical_profile(features, schema))
    columns = {name: [value] for name, value in CUSTOMER.items()}
    prepared = explainer.preprocessor.matrix(SklearnPredictor(schema, pipeline).prepare(columns), 1)
    weights = pipeline.named_steps["classifier"].coef_[0]
    names = pipeline.named_steps["preprocess"].get_feature_names_out()
    contract = np.array([n.startswith("categorical__contract_type_") for n in names])
    shares = features["contract_type"].value_counts(normalize=True)
    mean = np.array(
        [shares.get(n.removeprefix("categorical__contract_type_"), 0.0) for n in names[contract]]
    )
    margin = float(weights[contract] @ (prepared[0, contract] - mean))
    explained = explainer.explain(SklearnPredictor(schema, pipeline).prepare(columns))
    index = schema.names.index("contract_type")
    total_margin = math.log(explained.probabilities[0] / (1 - explained.probabilities[0])) - (
        math.log(explained.base_value / (1 - explained.base_value))
    )
    # the secant maps margins to probabilities with one factor per row
    factor = (explained.probabilities[0] - explained.base_value) / total_margin
    assert explained.contributions[0, index] == pytest.approx(margin * factor, abs=1e-9)


# ---------------------------------------------------------------------------- brute force


def _path_dependent_value(tree: Any, x: np.ndarray, groups: np.ndarray, known: set[int]) -> float:
    """E[f(x) | x_S] as path-dependent TreeSHAP defines it, straight from the sklearn tree:
    at a split on a known feature follow x, otherwise average the children by their
    training weight."""
    value = tree.value[:, 0, :]
    leaf = value[:, 1] / value.sum(axis=1) if value.shape[1] == 2 else value[:, 0]

    def walk(node: int) -> float:
        left, right = tree.children_left[node], tree.children_right[node]
        if left < 0:
            return float(leaf[node])
        column = tree.feature[node]
        if groups[column] in known:
            # scikit-learn compares the float32 feature with the float64 threshold
            return walk(left if float(np.float32(x[column])) <= tree.threshold[node] else right)
        weights = tree.weighted_n_node_samples
        return (weights[left] * walk(left) + weights[right] * walk(right)) / weights[node]

    return walk(0)


def _brute_force_shapley(game: Any, players: int) -> np.ndarray:
    """Shapley values by the definition: every coalition, every player."""
    phi = np.zeros(players)
    values = {}
    for size in range(players + 1):
        for subset in itertools.combinations(range(players), size):
            values[frozenset(subset)] = game(set(subset))
    for i in range(players):
        for subset, v in values.items():
            if i in subset:
                continue
            s = len(subset)
            weight = math.factorial(s) * math.factorial(players - s - 1) / math.factorial(players)
            phi[i] += weight * (values[subset | {i}] - v)
    return phi


def _column_groups(pipeline: Pipeline, schema: FeatureSchema) -> np.ndarray:
    """Each transformed column's original feature, from sklearn's own column names (an
    independent derivation from churn.explain.column_groups)."""
    names = pipeline.named_steps["preprocess"].get_feature_names_out()
    groups = []
    for name in names:
        block, _, rest = name.partition("__")
        if block == "numeric":
            groups.append(schema.names.index(rest))
        else:
            groups.append(next(i for i, f in enumerate(schema.names) if rest.startswith(f + "_")))
    return np.array(groups)


@pytest.mark.parametrize("kind", ["random_forest", "gradient_boosting"])
def test_tree_contributions_are_the_brute_force_shapley_values(
    data: tuple[Config, pd.DataFrame, pd.Series, FeatureSchema], kind: str
) -> None:
    """On a small ensemble, the kernel's per-feature values equal the Shapley values computed
    by enumerating all 2^7 coalitions of original features (path-dependent game): of the
    probability for a forest, of the margin for boosting."""
    _, features, _, schema = data
    pipeline = _fit(data, kind, n_estimators=4, max_depth=4)
    explainer = make_explainer(pipeline, schema)
    groups = _column_groups(pipeline, schema)
    np.testing.assert_array_equal(groups, explainer.groups)
    classifier = pipeline.named_steps["classifier"]
    if kind == "random_forest":
        trees = [e.tree_ for e in classifier.estimators_]
        scale = 1.0 / len(trees)
    else:
        trees = [row[0].tree_ for row in classifier.estimators_]
        scale = classifier.learning_rate
    prepared = SklearnPredictor(schema, pipeline).prepare(_awkward_rows(features, schema))
    matrix = explainer.preprocessor.matrix(prepared, 150)
    phi = explainer.trees.shap(matrix, len(schema.names))  # type: ignore[attr-defined]
    for row in (0, 2, 9, 12, 40, 77):
        x = matrix[row]

        def game(known: set[int], x: np.ndarray = x) -> float:
            return scale * sum(_path_dependent_value(t, x, groups, known) for t in trees)

        exact = _brute_force_shapley(game, len(schema.names))
        np.testing.assert_allclose(phi[row], exact, atol=1e-12)
    if kind == "random_forest":
        explained = explainer.explain(prepared)
        np.testing.assert_allclose(explained.contributions, phi, atol=1e-15)


def test_linear_contributions_are_the_brute_force_shapley_values(
    data: tuple[Config, pd.DataFrame, pd.Series, FeatureSchema],
) -> None:
    """Logistic regression: the margin game with the training mean as the reference point,
    enumerated over all coalitions, mapped to the probability by the secant."""
    _, features, _, schema = data
    pipeline = _fit(data, "logistic_regression")
    explainer = make_explainer(pipeline, schema, categorical_profile(features, schema))
    classifier = pipeline.named_steps["classifier"]
    groups = _column_groups(pipeline, schema)
    prepared = SklearnPredictor(schema, pipeline).prepare(_awkward_rows(features, schema))
    z = explainer.preprocessor.matrix(prepared, 150, dtype=np.float64)
    reference = explainer.reference  # type: ignore[attr-defined]
    explained = explainer.explain(prepared)
    for row in (0, 3, 6, 8, 11):

        def game(known: set[int], row: int = row) -> float:
            mixed = np.where(np.isin(groups, list(known)), z[row], reference)
            return float(classifier.decision_function(mixed[None, :])[0])

        margin = _brute_force_shapley(game, len(schema.names))
        p, base = explained.probabilities[row], explained.base_value
        secant = (p - base) / margin.sum()
        np.testing.assert_allclose(explained.contributions[row], margin * secant, atol=1e-12)


def test_boosting_maps_the_margin_to_the_probability_by_the_secant(
    data: tuple[Config, pd.DataFrame, pd.Series, FeatureSchema],
) -> None:
    """Each probability contribution is the margin contribution times one factor per row,
    (p - base) / (margin sum): signs and order are kept, and a row at the base margin gets
    the sigmoid's slope (no division by zero)."""
    _, features, _, schema = data
    pipeline = _fit(data, "gradient_boosting", n_estimators=10, max_depth=3)
    explainer = make_explainer(pipeline, schema)
    prepared = SklearnPredictor(schema, pipeline).prepare(
        frame_to_columns(features.head(50), schema)
    )
    matrix = explainer.preprocessor.matrix(prepared, 50)
    margin = explainer.trees.shap(matrix, len(schema.names))  # type: ignore[attr-defined]
    explained = explainer.explain(prepared)
    assert np.array_equal(np.sign(explained.contributions), np.sign(margin))
    raw = pipeline.decision_function(features.head(50))
    base_margin = math.log(explained.base_value / (1 - explained.base_value))
    np.testing.assert_allclose(base_margin + margin.sum(axis=1), raw, atol=1e-9)
    from churn.explain import margin_to_probability

    base, flat, probability = margin_to_probability(0.3, np.array([[0.2, -0.2, 0.0]]))
    slope = base * (1 - base)
    assert probability[0] == pytest.approx(base, abs=1e-15)
    np.testing.assert_allclose(flat[0], [0.2 * slope, -0.2 * slope, 0.0], atol=1e-15)


# ---------------------------------------------------------------------------- plain words


def test_reasons_in_plain_words_largest_first() -> None:
    assert feature_label("contract_type") == "Contract type"
    assert (
        reason("contract_type", "Month-to-month", 0.2149) == "Contract type: Month-to-month +0.21"
    )
    assert reason("tenure", 3.0, -0.123) == "Tenure: 3 -0.12"
    assert reason("monthly_charges", 70.5, 0.004) == "Monthly charges: 70.5 +0.00"
    assert reason("tenure", float("nan"), -0.05) == "Tenure: missing -0.05"
    assert reason("total_charges", 1234567.25, 0.031) == "Total charges: 1234567.25 +0.03"
    assert reason("total_charges", 0.5, -0.031) == "Total charges: 0.5 -0.03"
    assert reason("payment_method", None, 0.01) == "Payment method: missing +0.01"
    explained = Explanations(
        ("tenure", "contract_type", "internet_service", "num_products"),
        0.25,
        np.array([[-0.12, 0.21, 0.05, -0.30]]),
        np.array([0.09]),
        "test",
    )
    values = {"tenure": 3.0, "contract_type": "Month-to-month", "internet_service": "DSL"}
    assert explained.reasons(0, {**values, "num_products": 4.0}) == [
        "Num products: 4 -0.30",
        "Contract type: Month-to-month +0.21",
        "Tenure: 3 -0.12",
    ]
    assert explained.reasons(0, {**values, "num_products": 4.0}, n=1) == ["Num products: 4 -0.30"]


# ---------------------------------------------------------------------------- fail closed


def test_unexplainable_models_are_refused_with_the_reason(
    data: tuple[Config, pd.DataFrame, pd.Series, FeatureSchema],
) -> None:
    _, features, target, schema = data
    pipeline = _fit(data, "random_forest")
    other = Pipeline(
        [
            ("preprocess", pipeline.named_steps["preprocess"]),
            ("classifier", KNeighborsClassifier(5)),
        ]
    ).fit(features, target)
    with pytest.raises(NotExplainable, match="KNeighborsClassifier has no exact explainer"):
        make_explainer(other, schema)
    with pytest.raises(NotExplainable, match="not a pipeline"):
        make_explainer(pipeline.named_steps["classifier"], schema)
    linear = _fit(data, "logistic_regression")
    with pytest.raises(NotExplainable, match="no category counts for 'contract_type'"):
        make_explainer(linear, schema, {"categorical": {}})


def test_an_explainer_that_disagrees_with_the_pipeline_is_not_used(
    trained_model: TrainedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load-time check: explanations that do not reproduce the pipeline's probabilities
    on sample rows (here shifted by 1e-4) make the model unexplainable, never served."""
    bundle = load_bundle(trained_model.bundle_dir)
    explainer = checked_explainer(bundle)
    rows = sample_rows(bundle, n=40)
    sklearn = SklearnPredictor(bundle.schema, bundle.pipeline)
    explained = explainer.explain(sklearn.prepare(rows))
    assert np.max(np.abs(explained.probabilities - sklearn.predict_proba(rows))) <= CHECK_TOLERANCE

    original = ForestExplainer._explain

    def shifted(self: ForestExplainer, columns: Any, n: int) -> Any:
        base, contributions, probabilities = original(self, columns, n)
        return base + 1e-4, contributions, probabilities + 1e-4

    monkeypatch.setattr(ForestExplainer, "_explain", shifted)
    with pytest.raises(NotExplainable, match="do not reproduce the pipeline's probabilities"):
        checked_explainer(bundle)


# ---------------------------------------------------------------------------- training


def test_training_logs_the_shap_summary_and_importance_table(
    trained_model: TrainedModel,
) -> None:
    """The run has the summary plot (a PNG) and the mean-|contribution| table (CSV and JSON,
    one row per feature, largest first); the bundle keeps the same importances."""
    client = MlflowClient(trained_model.tracking_uri)
    run_id = trained_model.result.run_id
    listed = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert "plots/shap_summary.png" in listed
    local = Path(client.download_artifacts(run_id, "plots/shap_summary.png"))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and local.stat().st_size > 10_000
    table = pd.read_csv(client.download_artifacts(run_id, "shap_importance.csv"))
    document = json.loads(
        Path(client.download_artifacts(run_id, "shap_importance.json")).read_text()
    )
    names = trained_model.config.features.all
    assert sorted(table["feature"]) == sorted(names)
    assert list(table["mean_abs_contribution"]) == sorted(
        table["mean_abs_contribution"], reverse=True
    )
    assert document["method"] == "tree_shap_probability"
    metadata = read_metadata(trained_model.bundle_dir)
    kept = metadata["explanations"]
    assert kept["available"] is True
    assert kept["importance"] == document["features"]
    assert kept["rows"] == document["rows"] == min(1000, metadata["training_data"]["val_rows"])
    assert table["mean_abs_contribution"].iloc[0] > 0.01


# ---------------------------------------------------------------------------- the API


@pytest.fixture(scope="module")
def client(
    trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    settings = make_settings(trained_model.model_path, tmp_path_factory.mktemp("explain_api"))
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _check_answer(prediction: dict[str, Any], features: list[str], served_tolerance: float) -> None:
    explanation = prediction["explanation"]
    assert set(explanation) == {"base_value", "probability", "contributions", "reasons", "method"}
    assert list(explanation["contributions"]) == features
    total = explanation["base_value"] + sum(explanation["contributions"].values())
    assert abs(total - explanation["probability"]) <= ADDITIVE
    # the served probability is rounded to 4 places (and may come from another backend)
    assert abs(explanation["probability"] - prediction["churn_probability"]) <= served_tolerance
    top = sorted(explanation["contributions"].items(), key=lambda kv: -abs(kv[1]))[:3]
    assert [r.split(":")[0] for r in explanation["reasons"]] == [feature_label(n) for n, _ in top]
    for text, (_, value) in zip(explanation["reasons"], top, strict=True):
        assert text.endswith(f" {value:+.2f}")


def test_predict_explains_with_the_served_numbers(
    client: TestClient, trained_model: TrainedModel
) -> None:
    """One customer: contributions per original feature that add up to the probability the
    forest backend served (to its 4-place rounding), reasons naming the customer's values."""
    assert client.get("/model").json()["backend"] == "forest"
    before = client.get("/metrics").text
    response = client.post("/predict?explain=true", json=CUSTOMER)
    assert response.status_code == 200, response.text
    body = response.json()
    _check_answer(body, list(trained_model.config.features.all), 0.5e-4 + 1e-12)
    assert any(
        r.startswith("Contract type: Month-to-month ") for r in body["explanation"]["reasons"]
    )
    plain = client.post("/predict", json=CUSTOMER).json()
    assert "explanation" not in plain
    assert plain["churn_probability"] == body["churn_probability"]
    after = client.get("/metrics").text
    explained = metric_value(after, "explained_predictions_total") - metric_value(
        before, "explained_predictions_total"
    )
    assert explained == 1


def test_batch_explains_every_row_and_logs_them_like_any_other(
    client: TestClient, trained_model: TrainedModel
) -> None:
    customers = [{**CUSTOMER, "tenure": t} for t in (0, 10, 40)]
    customers.append({**CUSTOMER, "internet_service": "Fibre", "tenure": None})
    before = client.get("/metrics").text
    response = client.post("/predict/batch?explain=1", json={"customers": customers})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    for prediction in predictions:
        _check_answer(prediction, list(trained_model.config.features.all), 0.5e-4 + 1e-12)
    assert "warnings" in predictions[3]
    shown = [r.rsplit(" ", 1)[0] for r in predictions[0]["explanation"]["reasons"]]
    assert set(shown) <= {
        "Tenure: 0",
        "Monthly charges: 70.5",
        "Total charges: 846",
        "Num products: 2",
        "Contract type: Month-to-month",
        "Payment method: Electronic check",
        "Internet service: Fiber optic",
    }
    for text in predictions[3]["explanation"]["reasons"]:
        assert not text.startswith("Tenure:") or text.startswith("Tenure: missing ")
    after = client.get("/metrics").text
    assert (
        metric_value(after, "explained_predictions_total")
        - metric_value(before, "explained_predictions_total")
        == 4
    )
    ids = [p["prediction_id"] for p in predictions]
    database = client.app.state.service.settings.database_url  # type: ignore[attr-defined]

    def logged() -> pd.DataFrame:
        frame = read_predictions(database)
        return frame[frame["prediction_id"].isin(ids)]

    assert wait_until(lambda: len(logged()) == 4)
    rows = logged().set_index("prediction_id").loc[ids]
    assert list(rows["probability"]) == [p["churn_probability"] for p in predictions]
    assert rows["tenure"].isna().tolist() == [False, False, False, True]


@pytest.mark.parametrize(
    ("query", "status"),
    [("explain=false", 200), ("explain=0", 200), ("explain=maybe", 422), ("explain=", 422)],
)
def test_explain_must_be_a_boolean(client: TestClient, query: str, status: int) -> None:
    for path, body in (("/predict", CUSTOMER), ("/predict/batch", {"customers": [CUSTOMER]})):
        response = client.post(f"{path}?{query}", json=body)
        assert response.status_code == status, response.text
        if status == 422:
            (error,) = response.json()["detail"]
            assert error["loc"] == ["query", "explain"] and error["type"] == "bool_parsing"
            assert "explain must be true or false" in error["msg"]
        else:
            assert "explanation" not in response.text


def test_model_shows_the_global_importances(
    client: TestClient, trained_model: TrainedModel
) -> None:
    body = client.get("/model").json()
    assert body["explanations_available"] is True
    assert body["explanations_unavailable_reason"] is None
    importance = body["explanations"]["importance"]
    assert [row["feature"] for row in importance] == [
        row["feature"]
        for row in read_metadata(trained_model.bundle_dir)["explanations"]["importance"]
    ]
    assert {row["feature"] for row in importance} == set(trained_model.config.features.all)
    assert all(row["mean_abs_contribution"] >= 0 for row in importance)


def test_openapi_documents_explain(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    for path in ("/predict", "/predict/batch"):
        parameters = document["paths"][path]["post"]["parameters"]
        assert [p["name"] for p in parameters] == ["explain"]
    answer = document["components"]["schemas"]["PredictionResponse"]["properties"]
    assert "explanation" in answer


def _unexplainable_bundle(trained_model: TrainedModel, target: Path) -> Path:
    """The trained bundle with its classifier replaced by one that has no exact explainer
    (signed as a real bundle; no ONNX export, so it is served by sklearn)."""
    bundle = load_bundle(trained_model.bundle_dir)
    frame = pd.DataFrame(sample_rows(bundle, n=200, seed=3))
    for name in bundle.schema.categorical:
        frame[name] = frame[name].str.strip()
    labels = (bundle.pipeline.predict_proba(frame)[:, 1] > 0.5).astype(int)
    labels[:2] = [0, 1]
    pipeline = Pipeline(
        [
            ("preprocess", bundle.pipeline.named_steps["preprocess"]),
            ("classifier", KNeighborsClassifier(5)),
        ]
    )
    pipeline.named_steps["classifier"].fit(
        pipeline.named_steps["preprocess"].transform(frame), labels
    )
    metadata = {k: v for k, v in bundle.metadata.items() if k not in ("files", "format_version")}
    save_bundle(target, pipeline, metadata, None)
    return target / "model.pkl"


def test_an_unexplainable_model_answers_422_with_the_reason(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    model_path = _unexplainable_bundle(trained_model, tmp_path / "bundle")
    settings = make_settings(model_path, tmp_path)
    with TestClient(create_app(settings)) as client:
        assert wait_until(lambda: client.get("/ready").status_code == 200)
        for path, body in (("/predict", CUSTOMER), ("/predict/batch", {"customers": [CUSTOMER]})):
            response = client.post(f"{path}?explain=true", json=body)
            assert response.status_code == 422, response.text
            (error,) = response.json()["detail"]
            assert error["loc"] == ["query", "explain"]
            assert error["type"] == "explanation_unavailable"
            assert error["msg"] == (
                "explanations are not available for this model: "
                "KNeighborsClassifier has no exact explainer"
            )
            assert client.post(path, json=body).status_code == 200  # predictions still served
        model = client.get("/model").json()
        assert model["explanations_available"] is False
        assert "KNeighborsClassifier" in model["explanations_unavailable_reason"]


def test_explanations_can_be_switched_off(trained_model: TrainedModel, tmp_path: Path) -> None:
    settings = make_settings(trained_model.model_path, tmp_path, explanations_enabled=False)
    with TestClient(create_app(settings)) as client:
        assert wait_until(lambda: client.get("/ready").status_code == 200)
        response = client.post("/predict?explain=true", json=CUSTOMER)
        assert response.status_code == 422
        assert "EXPLANATIONS_ENABLED=false" in response.json()["detail"][0]["msg"]


# ---------------------------------------------------------------------------- other model types


@pytest.fixture(scope="module", params=[t for t in MODEL_TYPES if t != "random_forest"])
def other_model(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> TrainedModel:
    """Gradient boosting and logistic regression, trained with the real recipe (small)."""
    tmp = tmp_path_factory.mktemp(request.param)
    generate_customers(2500, seed=13).to_csv(tmp / "churn_train.csv", index=False)
    config_path = write_config(
        tmp, model={"type": request.param, "n_estimators": 30, "max_depth": 3}
    )
    config = load_config(config_path)
    return TrainedModel(config_path, config, train(config, config_path=config_path))


@pytest.mark.parametrize("backend", ["auto", "sklearn"])
def test_other_model_types_explain_their_served_probability(
    other_model: TrainedModel, tmp_path: Path, backend: str
) -> None:
    """Boosting and logistic regression are served by ONNX (auto) or sklearn: base + sum is
    the sklearn pipeline's probability (1e-6), and the served probability is within the ONNX
    export's checked tolerance of it (to its rounding with sklearn itself)."""
    metadata = read_metadata(other_model.bundle_dir)
    assert metadata["explanations"]["available"] is True
    settings = make_settings(other_model.model_path, tmp_path, inference_backend=backend)
    customers = [{**CUSTOMER, "tenure": t, "num_products": 1 + t % 5} for t in range(0, 60, 4)]
    customers.append({**CUSTOMER, "contract_type": None, "monthly_charges": None})
    with TestClient(create_app(settings)) as client:
        assert wait_until(lambda: client.get("/ready").status_code == 200)
        served = client.get("/model").json()["backend"]
        assert served == ("onnx" if backend == "auto" else "sklearn")
        tolerance = 0.5e-4 + (
            other_model.config.export.onnx_max_abs_diff if served == "onnx" else 1e-12
        )
        response = client.post("/predict/batch?explain=true", json={"customers": customers})
        assert response.status_code == 200, response.text
        for prediction in response.json()["predictions"]:
            _check_answer(prediction, list(other_model.config.features.all), tolerance)
    frame = pd.DataFrame(customers)
    expected = load_bundle(other_model.bundle_dir).pipeline.predict_proba(
        prepare_features(
            frame, other_model.config.features.numeric, other_model.config.features.categorical
        )
    )[:, 1]
    explained = [p["explanation"]["probability"] for p in response.json()["predictions"]]
    np.testing.assert_allclose(explained, expected, atol=ADDITIVE)


def test_a_canary_batch_split_between_two_models_keeps_each_rows_own_explanation() -> None:
    """Rows answered by the challenger and by the champion, put back in request order: each
    row keeps its own model's base value and contributions, so base + Σ = probability holds
    row by row (app.service._interleave uses this)."""
    features = ("a", "b")
    mine = Explanations(features, 0.3, np.array([[0.1, 0.2]]), np.array([0.6]), "tree")
    theirs = Explanations(
        features, 0.5, np.array([[0.0, -0.1], [0.2, 0.1]]), np.array([0.4, 0.8]), "linear"
    )
    merged = Explanations.interleave([False, True, False], mine, theirs)
    assert [merged.base_of(k) for k in range(3)] == [0.5, 0.3, 0.5]
    assert [merged.method_of(k) for k in range(3)] == ["linear", "tree", "linear"]
    total = np.asarray(merged.base_value) + merged.contributions.sum(axis=1)
    np.testing.assert_allclose(total, merged.probabilities, atol=1e-12)
    rows = merged[1:].rows({"a": [1, 2], "b": [3, 4]}, 1)
    assert [r["base_value"] for r in rows] == [0.3, 0.5]
