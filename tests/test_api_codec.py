"""The request codec on its own: null only where the pipeline imputes, errors that name the
problem, answers formatted once (the API tests drive it through both transports)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.codec import Reinterpretation, RequestCodec, RequestError
from app.model import Answers, InputChecks
from churn.config import load_config
from churn.data import prepare_columns
from churn.datagen import generate_customers
from churn.schema import FeatureSchema, imputed_features
from tests.api_support import CUSTOMER
from tests.conftest import write_config


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> FeatureSchema:
    config = load_config(write_config(tmp_path_factory.mktemp("codec")))
    frame = generate_customers(500, seed=1)
    return FeatureSchema.from_training(config, frame)


def _decode(codec: RequestCodec, customer: dict[str, Any]) -> Any:
    return codec.decode_customer(json.dumps(customer).encode(), "application/json")


def test_the_schema_records_what_the_pipeline_imputes(
    schema: FeatureSchema, tmp_path: Path
) -> None:
    config = load_config(write_config(tmp_path))
    assert imputed_features(config) == set(schema.names)  # churn.pipeline imputes every one
    assert all(spec.imputed for spec in schema.features)


def test_null_only_where_the_schema_says_the_model_imputes(schema: FeatureSchema) -> None:
    imputing = RequestCodec(schema, 10, "1")
    assert _decode(imputing, {**CUSTOMER, "tenure": None})[0]["tenure"] is None
    # a bundle saved before `imputed` was recorded: nulls stay refused
    older = FeatureSchema.from_dict(
        {
            **schema.to_dict(),
            "features": [{**f, "imputed": False} for f in schema.to_dict()["features"]],
        }
    )
    with pytest.raises(RequestError) as refused:
        _decode(RequestCodec(older, 10, "1"), {**CUSTOMER, "tenure": None})
    assert refused.value.status == 422
    assert refused.value.detail[0]["loc"] == ["body", "tenure"]


def test_rules_in_order_content_type_then_json_then_size_then_fields(
    schema: FeatureSchema,
) -> None:
    codec = RequestCodec(schema, 2, "1")
    cases = [
        (b"{}", "text/plain", 415),
        (b'{"customers": [1, 2, 3]}', "text/plain", 415),
        (b'{"customers": NaN}', "application/json", 422),
        (json.dumps({"customers": [{"x": 1}] * 3}).encode(), "application/json", 413),
        (json.dumps({"customers": [CUSTOMER, {"x": 1}]}).encode(), "application/problem+json", 422),
    ]
    for body, content_type, status in cases:
        with pytest.raises(RequestError) as refused:
            codec.decode_batch(body, content_type)
        assert refused.value.status == status, body
    hidden = json.dumps({**CUSTOMER, "extra": 0}).replace("0}", "NaN}").encode()
    with pytest.raises(RequestError) as nan_refused:
        codec.decode_customer(hidden, "application/json")
    assert "NaN is not allowed" in nan_refused.value.detail[0]["msg"]


def test_answers_are_formatted_with_warnings_only_where_there_are_some(
    schema: FeatureSchema,
) -> None:
    codec = RequestCodec(schema, 10, "7")
    unknown = Reinterpretation("internet_service", "Fibre", "unknown_category")
    answers = Answers([0.5, 0.25], [True, False], ["MEDIUM", "LOW"], {}, [None, (unknown,)])
    body = json.loads(codec.encode_batch(answers, ["a" * 32, "b" * 32]))
    assert body["model_version"] == "7"
    assert body["count"] == 2
    first, second = body["predictions"]
    assert first == {
        "churn_probability": 0.5,
        "churn_prediction": True,
        "risk_tier": "MEDIUM",
        "model_version": "7",
        "prediction_id": "a" * 32,
    }
    assert second["warnings"] == [
        "internet_service: 'Fibre' was not seen in training; scored as unknown"
    ]
    plain = Answers([0.5], [True], ["MEDIUM"], {}, [])
    assert b"warnings" not in codec.encode_customer(plain, ["c" * 32])


@pytest.mark.parametrize("rows", [3, 40])  # both sides of the small-batch shortcut
def test_input_checks_flag_exactly_the_reinterpreted_values(
    schema: FeatureSchema, rows: int
) -> None:
    checks = InputChecks.from_schema(schema)
    tenure = schema.spec("tenure")
    assert tenure.observed_max is not None
    columns = {name: [CUSTOMER[name]] * rows for name in schema.names}
    columns["tenure"][1] = tenure.observed_max + 1
    columns["tenure"][2] = None
    columns["payment_method"][2] = "Cash"
    columns["internet_service"][0] = None  # missing is imputed, not unknown
    prepared = prepare_columns(columns, schema.numeric, schema.categorical)
    found = checks.find(prepared, rows)
    assert len(found) == rows
    assert found[0] is None
    assert found[1] == (
        Reinterpretation(
            "tenure",
            tenure.observed_max + 1,
            "out_of_range",
            tenure.observed_min,
            tenure.observed_max,
        ),
    )
    assert found[2] == (Reinterpretation("payment_method", "Cash", "unknown_category"),)
    assert all(f is None for f in found[3:])
    clean = prepare_columns(
        {name: [CUSTOMER[name]] * rows for name in schema.names}, schema.numeric, schema.categorical
    )
    assert checks.find(clean, rows) == []


def test_unknown_fields_are_named_at_their_level(schema: FeatureSchema) -> None:
    codec = RequestCodec(schema, 10, "1")
    body = json.dumps({"customer": [CUSTOMER]}).encode()
    with pytest.raises(RequestError) as refused:
        codec.decode_batch(body, "application/json")
    detail = {tuple(d["loc"]): d["msg"] for d in refused.value.detail}
    assert detail[("body", "customer")] == "customer: unknown field; did you mean 'customers'?"
    inner = json.dumps({"customers": [{**CUSTOMER, "tenure ": 1}]}).encode()
    with pytest.raises(RequestError) as refused:
        codec.decode_batch(inner, "application/json")
    assert refused.value.detail[0]["msg"] == "tenure : unknown field; did you mean 'tenure'?"
