"""The API contract through TestClient (lifespan on) on the small real model from conftest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.main import create_app
from app.settings import Settings
from churn.bundle import load_bundle
from churn.inference import SklearnPredictor
from churn.prediction_log import read_predictions
from churn.risk import risk_tier
from tests.api_support import ADMIN_TOKEN, CUSTOMER, make_settings, metric_value, wait_until
from tests.conftest import TrainedModel

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def api_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api")


@pytest.fixture(scope="module")
def client(trained_model: TrainedModel, api_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(
        trained_model.model_path,
        api_dir,
        max_batch_size=50,
        max_body_bytes=65536,
        admin_token=ADMIN_TOKEN,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def post_raw(client: TestClient, body: str | bytes, path: str = "/predict") -> Any:
    return client.post(path, content=body, headers=JSON)


# ---------------------------------------------------------------------------- contract


def test_predict_contract(client: TestClient, trained_model: TrainedModel) -> None:
    response = client.post("/predict", json=CUSTOMER)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "churn_probability",
        "churn_prediction",
        "risk_tier",
        "model_version",
        "prediction_id",
    }
    p = body["churn_probability"]
    assert 0.0 <= p <= 1.0
    assert round(p, 4) == p
    assert body["churn_prediction"] is (p >= 0.5)
    assert body["risk_tier"] == risk_tier(p, 0.75, 0.45)
    assert body["model_version"] == trained_model.result.model_version != "unknown"
    assert len(body["prediction_id"]) == 32


def test_answers_match_the_sklearn_pipeline(
    client: TestClient, trained_model: TrainedModel
) -> None:
    bundle = load_bundle(trained_model.bundle_dir)
    sklearn = SklearnPredictor(bundle.schema, bundle.pipeline)
    customers = [
        {**CUSTOMER, "tenure": t, "contract_type": c}
        for t in (0, 5, 30, 70)
        for c in ("Month-to-month", "Two year")
    ]
    got = client.post("/predict/batch", json={"customers": customers}).json()["predictions"]
    expected = sklearn.predict_proba({k: [c[k] for c in customers] for k in CUSTOMER})
    for answer, p in zip(got, expected, strict=True):
        assert answer["risk_tier"] == risk_tier(float(p), 0.75, 0.45)
        assert abs(answer["churn_probability"] - p) < 0.01


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    echoed = client.post("/predict", json=CUSTOMER, headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    generated = client.post("/predict", json=CUSTOMER)
    assert len(generated.headers["x-request-id"]) == 16
    hostile = client.get("/health", headers={"X-Request-ID": "a\tb" * 200})
    assert hostile.headers["x-request-id"] != "a\tb" * 200


def test_probes_and_model_metadata(client: TestClient, trained_model: TrainedModel) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "healthy"
    assert client.get("/ready").json() == {
        "status": "ready",
        "model_version": trained_model.result.model_version,
        "reason": None,
    }
    meta = client.get("/model").json()
    assert meta["model_version"] == trained_model.result.model_version
    assert meta["run_id"] == trained_model.result.run_id
    assert {"trained_at", "metrics", "feature_schema", "backend"} <= set(meta)
    assert "reference_profile" not in meta


def test_openapi_has_the_bundle_schema_and_an_example(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    customer = doc["components"]["schemas"]["Customer"]
    # every feature is imputed by the pipeline, so each also takes null
    contract, null = customer["properties"]["contract_type"]["anyOf"]
    assert contract["enum"] == ["Month-to-month", "One year", "Two year"]
    assert null == {"type": "null"}
    products = customer["properties"]["num_products"]["anyOf"][0]
    assert products["type"] == "integer"
    assert products["maximum"] == 10
    assert set(customer["required"]) == set(CUSTOMER)
    assert customer["additionalProperties"] is False  # unknown fields are refused
    batch = doc["components"]["schemas"]["BatchRequest"]
    assert "All or nothing" in batch["properties"]["customers"]["description"]
    answer = doc["components"]["schemas"]["PredictionResponse"]
    assert "warnings" in answer["properties"]
    assert "warnings" not in answer["required"]
    assert customer["examples"][0].keys() == CUSTOMER.keys()
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/Customer"}
    assert client.get("/docs").status_code == 200


def test_metrics_exposition(client: TestClient) -> None:
    before = client.get("/metrics").text
    client.post("/predict", json=CUSTOMER)
    client.post("/predict", json={**CUSTOMER, "payment_method": "Carrier pigeon"})
    text = client.get("/metrics").text
    assert metric_value(text, "predictions_total") == metric_value(before, "predictions_total") + 2
    assert metric_value(text, "unknown_category_total", feature="payment_method") >= 1
    assert metric_value(text, "unknown_category_total", feature="internet_service") == 0
    assert metric_value(text, "prediction_probability_count") >= 2
    assert metric_value(text, "prediction_latency_seconds_count") >= 2
    assert metric_value(text, "http_requests_total", route="/predict", status="200") >= 2
    assert metric_value(text, "http_request_duration_seconds_count", route="/predict") >= 2
    assert metric_value(text, "model_info", backend="forest") == 1
    # the model that answered: the champion (no challenger here)
    answered = metric_value(text, "predictions_total", role="champion")
    assert answered == metric_value(before, "predictions_total", role="champion") + 2
    assert metric_value(text, "predictions_total", role="challenger") == 0
    assert metric_value(text, "prediction_latency_seconds_count", role="challenger") == 0
    assert metric_value(text, "rollout_canary_share") == 0
    assert metric_value(text, "rollout_stage") == 0  # no stage applies without a challenger
    for name in (
        "high_risk_predictions_total",
        "prediction_log_dropped_total",
        "model_reloads_total",
        "shadow_predictions_total",
        "rollout_rollbacks_total",
    ):
        assert name in text
    assert metric_value(text, "http_requests_total", route="/health") == 0  # probes left out


# ---------------------------------------------------------------------------- bad input

BAD_BODIES = {
    "wrong type": (json.dumps({**CUSTOMER, "tenure": "long"}), "tenure"),
    "negative": (json.dumps({**CUSTOMER, "monthly_charges": -1}), "monthly_charges"),
    "too many products": (json.dumps({**CUSTOMER, "num_products": 11}), "num_products"),
    "fractional products": (json.dumps({**CUSTOMER, "num_products": 2.5}), "num_products"),
    "contract outside the list": (
        json.dumps({**CUSTOMER, "contract_type": "Weekly"}),
        "contract_type",
    ),
    "missing field": (json.dumps({k: v for k, v in CUSTOMER.items() if k != "tenure"}), "tenure"),
    "boolean as a number": (json.dumps({**CUSTOMER, "tenure": True}), "tenure"),
    "string as a number": (json.dumps({**CUSTOMER, "monthly_charges": "3_000"}), "monthly_charges"),
    "digits as a number": (json.dumps({**CUSTOMER, "tenure": "2"}), "tenure"),
    "fraction as an integer": (json.dumps({**CUSTOMER, "num_products": 2.0}), "num_products"),
    "number as a category": (json.dumps({**CUSTOMER, "payment_method": 3}), "payment_method"),
    "unknown field": (json.dumps({**CUSTOMER, "note": "vip"}), "note"),
    "routing key as a fraction": (json.dumps({**CUSTOMER, "customer_id": 1.5}), "customer_id"),
    "routing key as a boolean": (json.dumps({**CUSTOMER, "customer_id": False}), "customer_id"),
    "routing key as an object": (json.dumps({**CUSTOMER, "customer_id": {}}), "customer_id"),
    "empty routing key": (json.dumps({**CUSTOMER, "customer_id": ""}), "customer_id"),
    "lone surrogate": (json.dumps({**CUSTOMER, "payment_method": "\ud800"}), None),
    "NaN": (json.dumps(CUSTOMER).replace("12", "NaN", 1), None),
    "Infinity": (json.dumps(CUSTOMER).replace("846.0", "Infinity"), None),
    "NaN elsewhere": (json.dumps({**CUSTOMER, "note": 0}).replace(": 0}", ": NaN}"), None),
    "overflow to infinity": (json.dumps(CUSTOMER).replace("846.0", "1e999"), "total_charges"),
    "empty body": ("", None),
    "whitespace body": ("  \n", None),
    "array": ("[1, 2]", None),
    "string": ('"customer"', None),
    "null": ("null", None),
    "malformed": ('{"tenure": 12,', None),
    "not utf-8": (b"\xff\xfe{", None),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_input_is_422_with_field_and_reason(client: TestClient, case: str) -> None:
    body, field = BAD_BODIES[case]
    response = post_raw(client, body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail
    assert all(d["msg"] for d in detail)
    if field is not None:
        assert ["body", field] in [d["loc"] for d in detail]


def test_unknown_categories_are_accepted_with_a_warning(client: TestClient) -> None:
    response = client.post("/predict", json={**CUSTOMER, "internet_service": "Satellite"})
    assert response.status_code == 200
    assert response.json()["warnings"] == [
        "internet_service: 'Satellite' was not seen in training; scored as unknown"
    ]


def test_ordinary_answers_have_no_warnings(client: TestClient) -> None:
    padded = {**CUSTOMER, "internet_service": "  Fiber optic "}  # stripped, as in training
    answers = []
    for customer in (CUSTOMER, padded):
        response = client.post("/predict", json=customer)
        assert "warnings" not in response.json(), response.text
        assert '"warnings"' not in response.text
        answers.append({k: v for k, v in response.json().items() if k != "prediction_id"})
    assert answers[0] == answers[1]


def test_unknown_categories_are_counted_after_normalisation(client: TestClient) -> None:
    def unknown() -> float:
        text = client.get("/metrics").text
        return metric_value(text, "unknown_category_total", feature="internet_service")

    before = unknown()
    client.post("/predict", json={**CUSTOMER, "internet_service": " Fiber optic "})
    assert unknown() == before  # padding is stripped, as in training: a known category
    customers = [{**CUSTOMER, "internet_service": "Fibre"}] * 3 + [CUSTOMER]
    client.post("/predict/batch", json={"customers": customers})
    assert unknown() == before + 3


def test_values_outside_the_training_range_are_named(
    client: TestClient, trained_model: TrainedModel
) -> None:
    tenure = load_bundle(trained_model.bundle_dir).schema.spec("tenure")
    assert tenure.observed_max is not None
    customers = [
        CUSTOMER,
        {**CUSTOMER, "tenure": int(tenure.observed_max) + 100, "payment_method": "Cash"},
    ]
    body = client.post("/predict/batch", json={"customers": customers}).json()
    first, second = body["predictions"]
    assert "warnings" not in first
    assert second["warnings"] == [
        f"tenure: {int(tenure.observed_max) + 100} is outside the training range "
        f"[{tenure.observed_min:g}, {tenure.observed_max:g}]; the model extrapolates",
        "payment_method: 'Cash' was not seen in training; scored as unknown",
    ]


def test_a_misspelt_field_is_named_as_the_likely_typo(client: TestClient) -> None:
    customer = {k: v for k, v in CUSTOMER.items() if k != "tenure"} | {"tenur": 12}
    response = client.post("/predict", json=customer)
    assert response.status_code == 422
    detail = {tuple(d["loc"]): d["msg"] for d in response.json()["detail"]}
    assert detail[("body", "tenur")] == "tenur: unknown field; did you mean 'tenure'?"
    assert detail[("body", "tenure")] == "Field required"
    unrelated = client.post("/predict", json={**CUSTOMER, "zzz": 1}).json()["detail"]
    assert unrelated[0]["loc"] == ["body", "zzz"]
    assert unrelated[0]["msg"].startswith("zzz: unknown field; the fields are [")


def test_nulls_are_scored_and_logged_as_missing(client: TestClient, api_dir: Path) -> None:
    """Every feature is imputed by the pipeline: null is accepted, scored like the pipeline
    scores a missing value, and logged as null so drift sees the missing rate."""
    customer = {**CUSTOMER, "monthly_charges": None, "internet_service": None}
    response = client.post("/predict", json=customer)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert "warnings" not in answer
    pid = answer["prediction_id"]
    url = f"sqlite:///{api_dir / 'prediction_log.db'}"
    assert wait_until(lambda: bool((read_predictions(url)["prediction_id"] == pid).any()))
    row = read_predictions(url).set_index("prediction_id").loc[pid]
    assert row["monthly_charges"] != row["monthly_charges"]  # NaN: missing
    assert row["internet_service"] is None or row["internet_service"] != row["internet_service"]
    assert row["tenure"] == CUSTOMER["tenure"]
    absent = {k: v for k, v in CUSTOMER.items() if k != "monthly_charges"}
    refused = client.post("/predict", json=absent)
    assert refused.status_code == 422  # null is "unknown"; an absent field is still a mistake
    assert refused.json()["detail"][0]["loc"] == ["body", "monthly_charges"]


def test_non_json_content_type_is_415(client: TestClient) -> None:
    for headers in (
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
        {},
    ):
        response = client.post("/predict", content=json.dumps(CUSTOMER), headers=headers)
        assert response.status_code == 415, headers


def test_oversized_body_is_413_by_length_and_by_stream(client: TestClient) -> None:
    big = json.dumps({**CUSTOMER, "padding": "x" * 70_000})
    assert post_raw(client, big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(70):
            yield b" " * 1000

    response = client.post("/predict", content=chunks(), headers=JSON)
    assert response.status_code == 413
    assert "65536" in response.json()["detail"]


def test_compressed_body_is_415_with_a_reason(client: TestClient) -> None:
    import gzip

    body = gzip.compress(json.dumps(CUSTOMER).encode())
    for path in ("/predict", "/predict/batch", "/feedback"):
        response = client.post(path, content=body, headers={**JSON, "content-encoding": "gzip"})
        assert response.status_code == 415, path
        assert "Content-Encoding 'gzip'" in response.json()["detail"]
    # any encoding but identity; identity (or none) is a plain body
    deflate = {**JSON, "content-encoding": "deflate"}
    assert client.post("/predict", content=b"{}", headers=deflate).status_code == 415
    identity = {**JSON, "content-encoding": "identity"}
    assert client.post("/predict", json=CUSTOMER, headers=identity).status_code == 200


def test_requests_answered_before_routing_carry_their_route(client: TestClient) -> None:
    """413 by length or by stream, 415 and a client gone mid-body are labelled with the
    route template in the request metrics, not "unmatched"."""
    before = client.get("/metrics").text

    def count(text: str, status: str) -> float:
        return metric_value(text, "http_requests_total", route="/predict", status=status)

    post_raw(client, json.dumps({**CUSTOMER, "padding": "x" * 70_000}))
    client.post("/predict", content=(b" " * 1000 for _ in range(70)), headers=JSON)
    client.post("/predict", content=b"{}", headers={**JSON, "content-encoding": "gzip"})

    async def disconnect_mid_body() -> None:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/predict",
            "raw_path": b"/predict",
            "root_path": "",
            "scheme": "http",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
            "client": ("127.0.0.1", 1),
            "server": ("test", 80),
            "http_version": "1.1",
            "asgi": {"version": "3.0"},
        }
        messages = iter(
            [{"type": "http.request", "body": b'{"tenure"', "more_body": True}],
        )

        async def receive() -> dict[str, Any]:
            return next(messages, {"type": "http.disconnect"})

        async def send(message: dict[str, Any]) -> None:
            raise AssertionError(f"nothing is sent to a client that left: {message}")

        await client.app(scope, receive, send)  # type: ignore[arg-type]

    client.portal.call(disconnect_mid_body)  # type: ignore[union-attr]
    after = client.get("/metrics").text
    assert count(after, "413") == count(before, "413") + 2
    assert count(after, "415") == count(before, "415") + 1
    assert count(after, "499") == count(before, "499") + 1


# ---------------------------------------------------------------------------- batch


def test_batch_answers_in_order(client: TestClient) -> None:
    customers = [{**CUSTOMER, "tenure": t} for t in range(0, 60, 3)]
    response = client.post("/predict/batch", json={"customers": customers})
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == len(customers) == len(body["predictions"])
    singles = [client.post("/predict", json=c).json()["churn_probability"] for c in customers]
    assert [p["churn_probability"] for p in body["predictions"]] == singles
    assert len({p["prediction_id"] for p in body["predictions"]}) == len(customers)


def test_batch_limits(client: TestClient) -> None:
    too_many = client.post("/predict/batch", json={"customers": [CUSTOMER] * 51})
    assert too_many.status_code == 413
    assert "50" in too_many.json()["detail"]
    assert client.post("/predict/batch", json={"customers": []}).status_code == 422
    bad_row = client.post(
        "/predict/batch", json={"customers": [CUSTOMER, {**CUSTOMER, "tenure": -3}]}
    )
    assert bad_row.status_code == 422
    assert ["body", "customers", 1, "tenure"] in [d["loc"] for d in bad_row.json()["detail"]]


def test_an_invalid_batch_names_every_invalid_row_and_scores_nothing(client: TestClient) -> None:
    before = metric_value(client.get("/metrics").text, "predictions_total")
    customers = [
        CUSTOMER,
        {**CUSTOMER, "tenure": "2"},
        CUSTOMER,
        {**CUSTOMER, "num_products": 0, "contract_type": "Weekly"},
        {k: v for k, v in CUSTOMER.items() if k != "tenure"},
    ]
    response = client.post("/predict/batch", json={"customers": customers})
    assert response.status_code == 422
    locs = [tuple(d["loc"]) for d in response.json()["detail"]]
    assert locs == [
        ("body", "customers", 1, "tenure"),
        ("body", "customers", 3, "num_products"),
        ("body", "customers", 3, "contract_type"),
        ("body", "customers", 4, "tenure"),
    ]
    assert all(d["msg"] for d in response.json()["detail"])
    assert metric_value(client.get("/metrics").text, "predictions_total") == before


# ---------------------------------------------------------------------------- feedback


def test_feedback_joins_the_prediction_log(client: TestClient, api_dir: Path) -> None:
    pid = client.post("/predict", json=CUSTOMER).json()["prediction_id"]
    response = client.post("/feedback", json={"prediction_id": pid, "outcome": True})
    assert response.status_code == 200, response.text
    url = f"sqlite:///{api_dir / 'prediction_log.db'}"

    def logged() -> bool:
        frame = read_predictions(url)
        return bool((frame["prediction_id"] == pid).any())

    assert wait_until(logged)
    row = read_predictions(url).set_index("prediction_id").loc[pid]
    assert row["outcome"] == 1.0
    assert row["contract_type"] == CUSTOMER["contract_type"]
    assert row["tenure"] == CUSTOMER["tenure"]


def test_feedback_for_an_unknown_id_is_404(client: TestClient) -> None:
    response = client.post("/feedback", json={"prediction_id": "0" * 32, "outcome": False})
    assert response.status_code == 404
    assert client.post("/feedback", json={"outcome": False}).status_code == 422


@pytest.mark.parametrize("outcome", ["off", "true", 1, 0, None])
def test_feedback_outcome_is_a_json_boolean(client: TestClient, outcome: Any) -> None:
    pid = client.post("/predict", json=CUSTOMER).json()["prediction_id"]
    response = client.post("/feedback", json={"prediction_id": pid, "outcome": outcome})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "outcome"]


# ---------------------------------------------------------------------------- settings


def test_settings_refuse_wildcard_cors_outside_development() -> None:
    with pytest.raises(ValidationError, match="CORS_ORIGINS"):
        Settings(cors_origins="*", environment="production")
    assert Settings(cors_origins="*", environment="development").cors_origins == ["*"]
    assert Settings(cors_origins="https://a.example, https://b.example").cors_origins == [
        "https://a.example",
        "https://b.example",
    ]
    assert Settings().cors_origins == []


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("RISK_HIGH", "0.9")
    monkeypatch.setenv("ADMIN_TOKEN", "")
    settings = Settings()
    assert settings.max_batch_size == 7
    assert settings.risk_high == 0.9
    assert not settings.admin_enabled


def test_thresholds_are_configurable(trained_model: TrainedModel, tmp_path: Path) -> None:
    settings = make_settings(
        trained_model.model_path,
        tmp_path,
        risk_high=0.02,
        risk_medium=0.01,
        decision_threshold=0.015,
    )
    with TestClient(create_app(settings)) as c:
        body = c.post(
            "/predict", json={**CUSTOMER, "contract_type": "Two year", "tenure": 70}
        ).json()
        assert body["risk_tier"] == risk_tier(body["churn_probability"], 0.02, 0.01)
        assert c.get("/model").json()["thresholds"]["high"] == 0.02
