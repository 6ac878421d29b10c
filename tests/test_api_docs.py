"""The client developer's first hour: docs that work offline, / to /docs, batch feedback."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from churn.prediction_log import read_predictions
from tests.api_support import CUSTOMER, make_settings
from tests.conftest import TrainedModel

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def client(
    trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("docs")
    settings = make_settings(trained_model.model_path, tmp, max_batch_size=20)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test (TestClient needs none)."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
        ("/redoc", {"redoc.standalone.js", "favicon.png"}),
    ],
)
def test_docs_pages_load_their_assets_from_the_api(
    client: TestClient, no_network: None, page: str, expected: set[str]
) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    html = response.text
    assert "http://" not in html and "https://" not in html, "no outside URL on the page"
    assets = ASSET.findall(html)
    assert {a.rsplit("/", 1)[-1] for a in assets} == expected
    for url in assets:
        assert url.startswith("/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url
    assert "'/openapi.json'" in html or '"/openapi.json"' in html
    assert client.get("/openapi.json").status_code == 200


def test_root_redirects_to_the_docs(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "/docs"


def test_docs_can_be_switched_off(trained_model: TrainedModel, tmp_path: Path) -> None:
    settings = make_settings(trained_model.model_path, tmp_path, docs_enabled=False)
    with TestClient(create_app(settings)) as off:
        for path in ("/", "/docs", "/redoc", "/openapi.json", "/docs-assets/swagger-ui.css"):
            assert off.get(path).status_code == 404, path
        assert off.post("/predict", json=CUSTOMER).status_code == 200


def test_openapi_documents_the_batch_feedback_body(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    body = document["paths"]["/feedback/batch"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert schema["type"] == "array"
    assert schema["items"] == {"$ref": "#/components/schemas/FeedbackRequest"}


# ---------------------------------------------------------------------------- batch feedback


def test_batch_feedback_records_each_item(client: TestClient) -> None:
    database_url = str(client.app.state.settings.database_url)
    answer = client.post("/predict/batch", json={"customers": [CUSTOMER] * 3})
    assert answer.status_code == 200, answer.text
    ids = [p["prediction_id"] for p in answer.json()["predictions"]]
    unknown = "0" * 32
    items = [
        {"prediction_id": ids[0], "outcome": True},
        {"prediction_id": ids[1], "outcome": False},
        {"prediction_id": unknown, "outcome": True},
        {"prediction_id": ids[2], "outcome": True},
    ]
    response = client.post("/feedback/batch", json=items)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["recorded"], body["unknown"]) == (3, 1)
    assert [r["status"] for r in body["results"]] == [
        "recorded",
        "recorded",
        "unknown_prediction",
        "recorded",
    ]
    assert [r["prediction_id"] for r in body["results"]] == [i["prediction_id"] for i in items]
    # Replaying is safe: an outcome is stored or replaced, never doubled; within one array
    # the later item for an id wins, as if they were sent one by one.
    again = client.post(
        "/feedback/batch",
        json=[*items[:2], {"prediction_id": ids[0], "outcome": False}],
    )
    assert again.status_code == 200 and again.json()["recorded"] == 3
    outcomes = read_predictions(database_url).set_index("prediction_id")["outcome"]
    assert (outcomes[ids[0]], outcomes[ids[1]], outcomes[ids[2]]) == (0.0, 0.0, 1.0)
    assert outcomes.index.is_unique


def test_batch_feedback_is_validated_whole_before_anything_is_recorded(
    client: TestClient,
) -> None:
    pid = client.post("/predict", json=CUSTOMER).json()["prediction_id"]
    bad = [{"prediction_id": pid, "outcome": True}, {"prediction_id": pid}]
    response = client.post("/feedback/batch", json=bad)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", 1, "outcome"]

    not_a_list = client.post("/feedback/batch", json={"prediction_id": pid, "outcome": True})
    assert not_a_list.status_code == 422
    assert "JSON array" in not_a_list.json()["detail"][0]["msg"]

    too_many = [{"prediction_id": pid, "outcome": True}] * 21
    response = client.post("/feedback/batch", json=too_many)
    assert response.status_code == 413
    assert "MAX_BATCH_SIZE" in response.json()["detail"]
