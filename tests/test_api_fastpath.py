"""Both transports (the pure-ASGI fast path and the FastAPI routes) answer byte-identically,
because both call the served model's codec (app.codec)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

import app.fastpath
from app.fastpath import PredictFastPath
from app.main import create_app
from app.metrics import PROBABILITY_BUCKETS, observe_many
from app.settings import Settings
from tests.api_support import CUSTOMER, make_settings, metric_value
from tests.conftest import TrainedModel

JSON = {"content-type": "application/json"}
ORIGIN = "http://dashboard.example"
_ID = re.compile(rb'"prediction_id":"[0-9a-f]{32}"')


def _start(settings: Settings, fast_path: bool) -> TestClient:
    application = create_app(settings)
    if not fast_path:  # the same app with its routes answering everything
        application.user_middleware = [
            m for m in application.user_middleware if m.cls is not PredictFastPath
        ]
    return TestClient(application)


@pytest.fixture(scope="module")
def clients(
    trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, TestClient]]:
    """(fast path, routes only): two apps serving the same model."""
    tmp: Path = tmp_path_factory.mktemp("fastpath")
    settings = make_settings(
        trained_model.model_path, tmp, max_batch_size=10, cors_origins=[ORIGIN]
    )
    with _start(settings, True) as fast, _start(settings, False) as routed:
        yield fast, routed


@pytest.fixture(scope="module")
def client(clients: tuple[TestClient, TestClient]) -> TestClient:
    return clients[0]


@pytest.fixture
def fast_answers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every body the fast path sends (the routes never call it)."""
    seen: list[Any] = []
    send_answer = app.fastpath.send_answer

    async def spy(send: Any, content: bytes, status: int = 200, extra: Any = None) -> None:
        seen.append((status, content))
        await send_answer(send, content, status, extra)

    monkeypatch.setattr(app.fastpath, "send_answer", spy)
    return seen


def _compact(response: Any) -> str:
    return json.dumps(response.json(), ensure_ascii=False, separators=(",", ":"))


def _same_answer(fast: Any, routed: Any) -> None:
    """Status, content type and bytes equal, prediction ids aside (new ones every call)."""
    assert fast.status_code == routed.status_code, (fast.text, routed.text)
    assert fast.headers["content-type"] == routed.headers["content-type"]
    # who answered (progressive delivery): the same headers from both transports
    for name in ("x-model-version", "x-model-role"):
        assert fast.headers.get(name) == routed.headers.get(name), name
    assert _ID.sub(b"ID", fast.content) == _ID.sub(b"ID", routed.content)
    assert fast.text == _compact(fast)  # the bytes FastAPI's JSONResponse would send


def test_single_answer_is_the_routes_answer(
    clients: tuple[TestClient, TestClient], fast_answers: list[Any]
) -> None:
    fast_client, routed_client = clients
    fast = fast_client.post("/predict", json=CUSTOMER)
    assert len(fast_answers) == 1
    routed = routed_client.post("/predict", json=CUSTOMER)
    assert len(fast_answers) == 1  # the route answered this one
    assert fast.status_code == 200
    _same_answer(fast, routed)
    assert len(fast.json()["prediction_id"]) == 32
    assert fast.json()["prediction_id"] != routed.json()["prediction_id"]


def test_batch_answer_is_the_routes_answer(
    clients: tuple[TestClient, TestClient], fast_answers: list[Any]
) -> None:
    fast_client, routed_client = clients
    customers = [{**CUSTOMER, "tenure": t} for t in (0, 10, 40)]
    customers.append({**CUSTOMER, "internet_service": "Fibre", "tenure": None})
    fast = fast_client.post("/predict/batch", json={"customers": customers})
    routed = routed_client.post("/predict/batch", json={"customers": customers})
    assert len(fast_answers) == 1
    assert fast.json()["count"] == 4
    assert "warnings" in fast.json()["predictions"][3]
    _same_answer(fast, routed)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/predict", json.dumps({**CUSTOMER, "tenure": -1}), 422),
        ("/predict", json.dumps(CUSTOMER).replace("12", "NaN", 1), 422),
        ("/predict", "", 422),
        ("/predict", "[1]", 422),
        ("/predict", json.dumps({**CUSTOMER, "tenure": True}), 422),
        ("/predict/batch", json.dumps({"customers": [CUSTOMER] * 11}), 413),
        ("/predict/batch", json.dumps({"customers": []}), 422),
        ("/predict/batch", json.dumps({"customers": [CUSTOMER, {"tenur": 1}]}), 422),
    ],
)
def test_refused_requests_get_the_routes_errors(
    clients: tuple[TestClient, TestClient],
    fast_answers: list[Any],
    path: str,
    body: str,
    status: int,
) -> None:
    fast_client, routed_client = clients
    response = fast_client.post(path, content=body, headers=JSON)
    assert response.status_code == status, response.text
    assert [s for s, _ in fast_answers] == [status]  # refused by the fast path itself
    _same_answer(response, routed_client.post(path, content=body, headers=JSON))
    detail = response.json()["detail"]
    if status == 422:
        assert all(set(d) == {"loc", "msg", "type"} and d["loc"][0] == "body" for d in detail)


def test_other_media_types(clients: tuple[TestClient, TestClient], fast_answers: list[Any]) -> None:
    fast_client, routed_client = clients
    body = json.dumps(CUSTOMER)
    vendor = fast_client.post(
        "/predict", content=body, headers={"content-type": "application/x+json"}
    )
    assert vendor.status_code == 200
    for headers in ({"content-type": "text/plain"}, {}):
        text = fast_client.post("/predict", content=body, headers=headers)
        assert text.status_code == 415
        _same_answer(text, routed_client.post("/predict", content=body, headers=headers))


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
    refused = client.post("/predict", json={**CUSTOMER, "tenure": "x"})
    assert refused.status_code == 422
    labelled = metric_value(
        client.get("/metrics").text, "http_requests_total", route="/predict", status="422"
    )
    assert labelled >= 1


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
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: v != v or abs(v) == np.inf),
    st.sampled_from(
        ["Month-to-month", "One year", "DSL", " DSL ", "Fiber optic", "fiber optic", "No", "", "3"]
    ),
    st.sampled_from(["\ud800", "\u00e9", "3_000"]),
    st.lists(st.integers(0, 3), max_size=2),
)


def _body(customers: list[dict[str, Any]], batch: bool) -> bytes:
    # allow_nan: the stdlib writes NaN/Infinity, which the API must refuse wherever they are
    return json.dumps({"customers": customers} if batch else customers[0]).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.dictionaries(st.sampled_from([*CUSTOMER, "extra", "tenur"]), _VALUES, max_size=4),
    dropped=st.sets(st.sampled_from(list(CUSTOMER)), max_size=2),
    batch_size=st.integers(0, 3),
)
def test_both_transports_answer_any_body_alike(
    clients: tuple[TestClient, TestClient],
    changes: dict[str, Any],
    dropped: set[str],
    batch_size: int,
) -> None:
    """Any JSON body, valid or not, gets the same status and bytes from the fast path as from
    the route, for one customer and for a batch."""
    fast_client, routed_client = clients
    customer = {k: v for k, v in {**CUSTOMER, **changes}.items() if k not in dropped}
    for path, body in (
        ("/predict", _body([customer], batch=False)),
        ("/predict/batch", _body([customer] * batch_size, batch=True)),
    ):
        fast = fast_client.post(path, content=body, headers=JSON)
        routed = routed_client.post(path, content=body, headers=JSON)
        _same_answer(fast, routed)
        assert fast.status_code in (200, 413, 422), fast.text
        if b"NaN" in body or b"Infinity" in body:
            assert fast.status_code == 422


@pytest.mark.parametrize("query", ["explain=true", "explain=maybe", "explain=false&explain=1"])
def test_explained_answers_and_refusals_are_the_routes(
    clients: tuple[TestClient, TestClient], fast_answers: list[Any], query: str
) -> None:
    """?explain=... is read by the codec, so both transports explain (or refuse) alike."""
    fast_client, routed_client = clients
    customers = [CUSTOMER, {**CUSTOMER, "tenure": None, "contract_type": "Two year"}]
    for path, body in (("/predict", CUSTOMER), ("/predict/batch", {"customers": customers})):
        fast = fast_client.post(f"{path}?{query}", json=body)
        routed = routed_client.post(f"{path}?{query}", json=body)
        assert fast.status_code == (422 if "maybe" in query else 200), fast.text
        assert "explanation" in fast.text or fast.status_code == 422
        _same_answer(fast, routed)
    assert len(fast_answers) == 2
