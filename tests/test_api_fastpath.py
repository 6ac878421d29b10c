"""The /predict fast path answers exactly as the FastAPI routes do, and only when it may."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from pydantic import ValidationError

import app.fastpath
from app.main import create_app
from app.metrics import PROBABILITY_BUCKETS, observe_many
from tests.api_support import CUSTOMER, make_settings, metric_value
from tests.conftest import TrainedModel

JSON = {"content-type": "application/json"}
ORIGIN = "http://dashboard.example"
# A lone surrogate in an ignored field: pydantic-core's JSON parser refuses it and the
# standard library accepts it, so this valid request is always answered by the route.
ROUTE_ONLY = json.dumps(CUSTOMER)[:-1] + ', "note": "\\ud800"}'


@pytest.fixture(scope="module")
def client(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp: Path = tmp_path_factory.mktemp("fastpath")
    settings = make_settings(
        trained_model.model_path, tmp, max_batch_size=10, cors_origins=[ORIGIN]
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def fast_answers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every body the fast path sends (the routes never call it)."""
    seen: list[Any] = []
    send_answer = app.fastpath.send_answer

    async def spy(send: Any, content: bytes) -> None:
        seen.append(content)
        await send_answer(send, content)

    monkeypatch.setattr(app.fastpath, "send_answer", spy)
    return seen


def _compact(response: Any) -> str:
    return json.dumps(response.json(), ensure_ascii=False, separators=(",", ":"))


def _without_id(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "prediction_id"}


def test_single_answer_is_the_routes_answer(client: TestClient, fast_answers: list[Any]) -> None:
    fast = client.post("/predict", json=CUSTOMER)
    assert len(fast_answers) == 1
    routed = client.post("/predict", content=ROUTE_ONLY, headers=JSON)
    assert len(fast_answers) == 1  # the route answered this one
    assert fast.status_code == routed.status_code == 200
    assert fast.headers["content-type"] == routed.headers["content-type"]
    assert _without_id(fast.json()) == _without_id(routed.json())
    assert len(fast.json()["prediction_id"]) == 32
    assert fast.json()["prediction_id"] != routed.json()["prediction_id"]
    assert fast.text == _compact(fast)  # the bytes FastAPI's JSONResponse would send


def test_batch_answer_is_the_routes_answer(client: TestClient, fast_answers: list[Any]) -> None:
    customers = [{**CUSTOMER, "tenure": t} for t in (0, 10, 40)]
    fast = client.post("/predict/batch", json={"customers": customers})
    assert len(fast_answers) == 1
    routed_body = json.dumps({"customers": customers})[:-1] + ', "note": "\\ud800"}'
    routed = client.post("/predict/batch", content=routed_body, headers=JSON)
    assert len(fast_answers) == 1
    assert fast.status_code == routed.status_code == 200
    fast_body, routed_json = fast.json(), routed.json()
    assert fast_body["count"] == routed_json["count"] == 3
    assert fast.text == _compact(fast)
    assert list(fast_body) == list(routed_json)
    assert [_without_id(p) for p in fast_body["predictions"]] == [
        _without_id(p) for p in routed_json["predictions"]
    ]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/predict", json.dumps({**CUSTOMER, "tenure": -1}), 422),
        ("/predict", json.dumps(CUSTOMER).replace("12", "NaN", 1), 422),
        ("/predict", "", 422),
        ("/predict", "[1]", 422),
        ("/predict/batch", json.dumps({"customers": [CUSTOMER] * 11}), 413),
        ("/predict/batch", json.dumps({"customers": []}), 422),
    ],
)
def test_refused_requests_get_the_routes_errors(
    client: TestClient, fast_answers: list[Any], path: str, body: str, status: int
) -> None:
    response = client.post(path, content=body, headers=JSON)
    assert response.status_code == status, response.text
    assert not fast_answers
    detail = response.json()["detail"]
    if status == 422:
        assert all(set(d) == {"loc", "msg", "type"} and d["loc"][0] == "body" for d in detail)


def test_other_media_types(client: TestClient, fast_answers: list[Any]) -> None:
    body = json.dumps(CUSTOMER)
    vendor = client.post("/predict", content=body, headers={"content-type": "application/x+json"})
    assert vendor.status_code == 200
    assert len(fast_answers) == 1
    text = client.post("/predict", content=body, headers={"content-type": "text/plain"})
    assert text.status_code == 415
    assert len(fast_answers) == 1


def test_fast_answers_keep_cors_request_id_and_metrics(
    client: TestClient, fast_answers: list[Any]
) -> None:
    before = client.get("/metrics").text
    response = client.post(
        "/predict", json=CUSTOMER, headers={"origin": ORIGIN, "x-request-id": "fast-1"}
    )
    assert len(fast_answers) == 1
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["x-request-id"] == "fast-1"
    after = client.get("/metrics").text
    counted = metric_value(after, "http_requests_total", route="/predict", status="200")
    assert (
        counted == metric_value(before, "http_requests_total", route="/predict", status="200") + 1
    )


def test_observe_many_is_observe_per_value() -> None:
    values = np.concatenate([np.linspace(0, 1, 997), [0.1, 0.2, 1.0, 0.30000001]])
    one, many = CollectorRegistry(), CollectorRegistry()
    single = Histogram("p", "p", buckets=PROBABILITY_BUCKETS, registry=one)
    batched = Histogram("p", "p", buckets=PROBABILITY_BUCKETS, registry=many)
    for value in values:
        single.observe(float(value))
    observe_many(batched, values)
    observe_many(batched, values[:3])  # the short path
    for value in values[:3]:
        single.observe(float(value))
    expected = {s.name + str(s.labels): s.value for s in next(iter(one.collect())).samples}
    got = {s.name + str(s.labels): s.value for s in next(iter(many.collect())).samples}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10_000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(["Month-to-month", "One year", "DSL", "Fiber optic", "No", "x", "", "3"]),
    st.lists(st.integers(0, 3), max_size=2),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.dictionaries(st.sampled_from([*CUSTOMER, "extra"]), _VALUES, max_size=4),
    dropped=st.sets(st.sampled_from(list(CUSTOMER)), max_size=2),
    batch_size=st.integers(0, 3),
)
def test_fast_validators_accept_exactly_what_the_request_models_accept(
    client: TestClient, changes: dict[str, Any], dropped: set[str], batch_size: int
) -> None:
    """The fast path's TypedDict validators and the routes' models share their fields: the
    same JSON passes or fails both, and what passes gives the same values in the same order."""
    model = client.app.state.service.model
    customer = {k: v for k, v in {**CUSTOMER, **changes}.items() if k not in dropped}
    for validator, request_model, body in (
        (model.customer_validator, model.customer_model, customer),
        (model.batch_validator, model.batch_model, {"customers": [customer] * batch_size}),
    ):
        raw = json.dumps(body)
        try:
            expected = request_model.model_validate_json(raw)
        except ValidationError:
            with pytest.raises(ValidationError):
                validator.validate_json(raw)
            continue
        got = validator.validate_json(raw)
        if "customers" in body:
            assert [list(c.items()) for c in got["customers"]] == [
                list(c.__dict__.items()) for c in expected.customers
            ]
        else:
            assert list(got.items()) == list(expected.__dict__.items())


@settings(max_examples=200, deadline=None)
@given(
    filler=st.binary(min_size=0, max_size=9000),
    constant=st.sampled_from([b"", b"NaN", b"Infinity", b"-Infinity", b"Na", b"Infinit"]),
    where=st.floats(0, 1),
)
def test_constant_scan_never_misses(filler: bytes, constant: bytes, where: float) -> None:
    at = int(len(filler) * where)
    body = filler[:at] + constant + filler[at:]
    exact = any(c in body for c in (b"NaN", b"Infinity"))
    if exact:
        assert app.fastpath._may_hold_constants(body)
    if len(body) < app.fastpath._LARGE_BODY:
        assert app.fastpath._may_hold_constants(body) == exact
