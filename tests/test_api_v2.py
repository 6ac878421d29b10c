"""The Open Inference Protocol (V2 REST) on the real app: the JSON API's validation, answers,
prediction log and metrics, every client mistake a 4xx {"error": ...} naming the problem."""

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

from app.batcher import ColumnRows, join_rows
from app.main import create_app
from app.v2 import V2InferFastPath
from churn.bundle import load_bundle
from churn.datagen import generate_customers
from churn.prediction_log import read_predictions
from tests.api_support import CUSTOMER, make_settings, metric_value, wait_until
from tests.conftest import TrainedModel

MAX_BATCH = 50
_ID = re.compile(rb'"prediction_id","datatype":"BYTES","shape":\[\d+\],"data":\[[^\]]*\]')


@pytest.fixture(scope="module")
def v2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("v2")


def _app(settings: Any, fast_path: bool = True) -> Any:
    application = create_app(settings)
    if not fast_path:  # the same app with its routes answering everything
        application.user_middleware = [
            m for m in application.user_middleware if m.cls is not V2InferFastPath
        ]
    return application


@pytest.fixture(scope="module")
def clients(trained_model: TrainedModel, v2_dir: Path) -> Iterator[tuple[TestClient, TestClient]]:
    """(fast path, routes only): two apps serving the same model, one prediction log."""
    settings = make_settings(
        trained_model.model_path, v2_dir, max_batch_size=MAX_BATCH, max_body_bytes=65536
    )
    with TestClient(_app(settings)) as fast, TestClient(_app(settings, False)) as routed:
        yield fast, routed


@pytest.fixture(scope="module")
def client(clients: tuple[TestClient, TestClient]) -> TestClient:
    return clients[0]


@pytest.fixture(scope="module")
def model(trained_model: TrainedModel) -> tuple[str, str, dict[str, str]]:
    """(name, version, datatype per feature) as the bundle says."""
    bundle = load_bundle(trained_model.bundle_dir)
    types = {
        s.name: ("BYTES" if s.kind == "categorical" else "INT64" if s.integer else "FP64")
        for s in bundle.schema.features
    }
    return bundle.name, bundle.version, types


def request(types: dict[str, str], customers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    n = len(customers)
    inputs = [
        {"name": name, "shape": [n], "datatype": dt, "data": [c[name] for c in customers]}
        for name, dt in types.items()
    ]
    return {"inputs": inputs, **extra}


def outputs(body: dict[str, Any]) -> dict[str, list[Any]]:
    return {o["name"]: o["data"] for o in body["outputs"]}


def infer_path(name: str, version: str | None = None) -> str:
    return f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"


# ---------------------------------------------------------------------------- happy path


def test_health_metadata_and_readiness(client: TestClient, model: Any) -> None:
    name, version, types = model
    server = client.get("/v2").json()
    assert server == {"name": "Churn prediction API", "version": "1.0.0", "extensions": []}
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    for path in (f"/v2/models/{name}", f"/v2/models/{name}/versions/{version}"):
        meta = client.get(path).json()
        assert meta["name"] == name and meta["versions"] == [version]
        assert meta["inputs"] == [
            {"name": n, "datatype": dt, "shape": [-1]} for n, dt in types.items()
        ]
        assert [(o["name"], o["datatype"]) for o in meta["outputs"]][:4] == [
            ("churn_probability", "FP64"),
            ("churn_prediction", "BOOL"),
            ("risk_tier", "BYTES"),
            ("prediction_id", "BYTES"),
        ]
        assert client.get(f"{path}/ready").json() == {"name": name, "ready": True}


def test_infer_answers_exactly_as_the_batch_api(client: TestClient, model: Any) -> None:
    name, version, types = model
    customers = generate_customers(40, seed=5)[list(types)].dropna().to_dict("records")
    customers = [{k: int(v) if types[k] == "INT64" else v for k, v in c.items()} for c in customers]
    batch = client.post("/predict/batch", json={"customers": customers}).json()["predictions"]
    for path in (infer_path(name), infer_path(name, version)):
        response = client.post(path, json=request(types, customers, id="req-7"))
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["model_name"], body["model_version"], body["id"]) == (name, version, "req-7")
        got = outputs(body)
        assert got["churn_probability"] == [p["churn_probability"] for p in batch]
        assert got["churn_prediction"] == [p["churn_prediction"] for p in batch]
        assert got["risk_tier"] == [p["risk_tier"] for p in batch]
        assert len(set(got["prediction_id"])) == len(customers)
        assert all(o["shape"] == [len(customers)] for o in body["outputs"])
        assert "warnings" not in got


def test_explain_adds_the_json_apis_explanations_as_tensors(
    clients: tuple[TestClient, TestClient], model: Any
) -> None:
    """`parameters.explain: true` (both transports): base value [N], contributions [N, F]
    (features named in its parameters) and reasons [N], equal to /predict/batch?explain=true's
    for the same rows; base + Σ contributions = the row's unrounded probability."""
    name, _, types = model
    customers = generate_customers(12, seed=9)[list(types)].dropna().to_dict("records")
    customers = [{k: int(v) if types[k] == "INT64" else v for k, v in c.items()} for c in customers]
    fast, routed = clients
    expected = fast.post("/predict/batch?explain=true", json={"customers": customers}).json()
    explained = [p["explanation"] for p in expected["predictions"]]
    for client in (fast, routed):
        body = client.post(
            infer_path(name), json=request(types, customers, parameters={"explain": True})
        ).json()
        by_name = {o["name"]: o for o in body["outputs"]}
        contributions = by_name["explanation_contributions"]
        features = contributions["parameters"]["features"].split(",")
        n = len(customers)
        assert contributions["shape"] == [n, len(features)] and set(features) == set(types)
        grid = np.asarray(contributions["data"]).reshape(n, len(features))
        base = np.asarray(by_name["explanation_base_value"]["data"])
        for k, e in enumerate(explained):
            assert base[k] == e["base_value"]
            assert dict(zip(features, grid[k].tolist(), strict=True)) == e["contributions"]
            assert by_name["explanation_reasons"]["data"][k] == "; ".join(e["reasons"])
            assert abs(base[k] + grid[k].sum() - e["probability"]) < 1e-6
        assert by_name["churn_probability"]["data"] == [
            p["churn_probability"] for p in expected["predictions"]
        ]


def test_requested_outputs_in_the_order_asked(client: TestClient, model: Any) -> None:
    name, _, types = model
    asked = [{"name": "risk_tier"}, {"name": "churn_probability", "parameters": {"x": 1}}]
    body = client.post(
        infer_path(name), json=request(types, [CUSTOMER], outputs=asked, parameters={"a": "b"})
    ).json()
    assert [o["name"] for o in body["outputs"]] == ["risk_tier", "churn_probability"]
    assert "id" not in body
    # asked for by name, warnings come even when empty
    body = client.post(
        infer_path(name), json=request(types, [CUSTOMER], outputs=[{"name": "warnings"}])
    ).json()
    assert body["outputs"] == [
        {"name": "warnings", "datatype": "BYTES", "shape": [1], "data": [""]}
    ]


def test_reinterpreted_inputs_are_named_in_a_warnings_output(
    client: TestClient, model: Any, trained_model: TrainedModel
) -> None:
    name, _, types = model
    tenure = load_bundle(trained_model.bundle_dir).schema.spec("tenure")
    assert tenure.observed_max is not None
    odd = {**CUSTOMER, "tenure": tenure.observed_max + 100, "payment_method": "Cash"}
    body = client.post(infer_path(name), json=request(types, [CUSTOMER, odd])).json()
    json_api = client.post("/predict", json=odd).json()
    assert outputs(body)["warnings"] == ["", "; ".join(json_api["warnings"])]


def test_null_is_imputed_as_in_the_json_api(client: TestClient, model: Any) -> None:
    name, _, types = model
    customer = {**CUSTOMER, "monthly_charges": None, "internet_service": None}
    body = client.post(infer_path(name), json=request(types, [customer])).json()
    single = client.post("/predict", json=customer).json()
    assert outputs(body)["churn_probability"] == [single["churn_probability"]]


def test_rows_are_logged_counted_and_take_feedback(
    client: TestClient, model: Any, v2_dir: Path
) -> None:
    name, _, types = model
    text = client.get("/metrics").text
    before = metric_value(text, "predictions_total")
    route = "/v2/models/{model_name}/infer"
    requests_before = metric_value(text, "http_requests_total", route=route, status="200")
    customers = [CUSTOMER, {**CUSTOMER, "tenure": 30}, {**CUSTOMER, "num_products": 1}]
    body = client.post(infer_path(name), json=request(types, customers)).json()
    ids = outputs(body)["prediction_id"]
    text = client.get("/metrics").text
    assert metric_value(text, "predictions_total") == before + 3
    assert (
        metric_value(text, "http_requests_total", route=route, status="200") == requests_before + 1
    )
    url = f"sqlite:///{v2_dir / 'prediction_log.db'}"
    assert wait_until(lambda: set(ids) <= set(read_predictions(url)["prediction_id"]))
    response = client.post("/feedback", json={"prediction_id": ids[1], "outcome": True})
    assert response.status_code == 200, response.text
    logged = read_predictions(url).set_index("prediction_id")
    assert logged.loc[ids[1], "outcome"] == 1.0
    assert logged.loc[ids[1], "tenure"] == 30
    assert logged.loc[ids[2], "num_products"] == 1
    assert logged.loc[ids[0], "contract_type"] == CUSTOMER["contract_type"]


def test_openapi_documents_v2_with_a_working_example(client: TestClient, model: Any) -> None:
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model_name}",
        "/v2/models/{model_name}/versions/{model_version}/ready",
        "/v2/models/{model_name}/versions/{model_version}/infer",
    ):
        assert path in paths, path
    body = paths["/v2/models/{model_name}/infer"]["post"]["requestBody"]["content"]
    example = body["application/json"]["example"]
    assert [i["name"] for i in example["inputs"]] == list(model[2])
    assert client.post(infer_path(model[0]), json=example).status_code == 200


# ---------------------------------------------------------------------------- client mistakes


def _mutate(types: dict[str, str], change: Any) -> dict[str, Any]:
    payload = request(types, [CUSTOMER, CUSTOMER])
    change(payload)
    return payload


def _input(payload: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in payload["inputs"] if t["name"] == name)


CASES: dict[str, tuple[Any, int, str]] = {
    "wrong datatype": (
        lambda p: _input(p, "num_products").update(datatype="FP64"),
        400,
        "input 'num_products': datatype FP64; this input is INT64",
    ),
    "a float for an integer feature": (
        lambda p: _input(p, "num_products").update(data=[1, 2.5]),
        400,
        "input 'num_products', element 1 (2.5): Input should be a valid integer",
    ),
    "a string for a number": (
        lambda p: _input(p, "monthly_charges").update(data=[70.5, "70.5"]),
        400,
        "input 'monthly_charges', element 1 (\"70.5\"): Input should be a valid number",
    ),
    "wrong shape": (
        lambda p: _input(p, "tenure").update(shape=[2, 1]),
        400,
        "input 'tenure': shape [2, 1] does not fit its 2 values; send shape [2]",
    ),
    "shape and data disagree": (
        lambda p: _input(p, "tenure").update(shape=[3]),
        400,
        "input 'tenure': shape [3] does not fit its 2 values",
    ),
    "nested data": (
        lambda p: _input(p, "tenure").update(data=[[12], [12]]),
        400,
        "input 'tenure': 'data' must be flat",
    ),
    "missing input": (
        lambda p: p["inputs"].pop(),
        400,
        "missing input 'internet_service'",
    ),
    "unknown input name": (
        lambda p: _input(p, "tenure").update(name="tenur"),
        400,
        "unknown input 'tenur'; did you mean 'tenure'?",
    ),
    "an input twice": (
        lambda p: p["inputs"].append(dict(p["inputs"][0])),
        400,
        "input 'tenure' is sent more than once",
    ),
    "mismatched lengths": (
        lambda p: _input(p, "tenure").update(data=[12], shape=[1]),
        400,
        "inputs differ in length (tenure 1, monthly_charges 2",
    ),
    "out of range": (
        lambda p: _input(p, "tenure").update(data=[12, -1]),
        400,
        "input 'tenure', element 1 (-1): Input should be greater than or equal to 0",
    ),
    "category not allowed": (
        lambda p: _input(p, "contract_type").update(data=["Month-to-month", "Weekly"]),
        400,
        "input 'contract_type', element 1 (\"Weekly\"): Input should be 'Month-to-month'",
    ),
    "no rows": (
        lambda p: [t.update(data=[], shape=[0]) for t in p["inputs"]],
        400,
        "the inputs hold no rows",
    ),
    "no inputs": (lambda p: p.pop("inputs"), 400, "'inputs' must be a non-empty array"),
    "empty inputs": (lambda p: p.update(inputs=[]), 400, "'inputs' must be a non-empty array"),
    "unknown top-level field": (
        lambda p: p.update(input=[]),
        400,
        "unknown field 'input'; did you mean 'inputs'?",
    ),
    "id not a string": (lambda p: p.update(id=7), 400, "'id' must be a string"),
    "explain not a boolean": (
        lambda p: p.update(parameters={"explain": "yes"}),
        400,
        "parameter 'explain': expected true or false",
    ),
    "a parameter that is an object": (
        lambda p: p.update(parameters={"priority": {"a": 1}}),
        400,
        "'parameters' 'priority': a parameter is a string, a finite number or a boolean",
    ),
    "unknown output": (
        lambda p: p.update(outputs=[{"name": "churn_probabilty"}]),
        400,
        "unknown output 'churn_probabilty'; did you mean 'churn_probability'?",
    ),
    "binary input data": (
        lambda p: _input(p, "tenure").update(parameters={"binary_data_size": 16}),
        400,
        "binary tensor data is not supported",
    ),
    "too many rows": (
        lambda p: [
            t.update(data=t["data"][:1] * (MAX_BATCH + 1), shape=[MAX_BATCH + 1])
            for t in p["inputs"]
        ],
        413,
        f"{MAX_BATCH + 1} rows in one call; the limit is {MAX_BATCH} (MAX_BATCH_SIZE)",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_request_is_refused_with_the_reason(
    clients: tuple[TestClient, TestClient], model: Any, case: str
) -> None:
    change, status, reason = CASES[case]
    payload = _mutate(model[2], change)
    for client in clients:  # the fast path and the routes say the same
        response = client.post(infer_path(model[0]), json=payload)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert reason in response.json()["error"], response.json()


def test_nan_and_infinity_are_refused_by_name(client: TestClient, model: Any) -> None:
    text = json.dumps(request(model[2], [CUSTOMER, CUSTOMER]))
    for constant in ("NaN", "Infinity", "-Infinity"):
        body = text.replace("70.5", constant, 1)
        response = client.post(infer_path(model[0]), content=body)
        assert response.status_code == 400
        assert response.json()["error"] == (
            f"input 'monthly_charges', element 0 ({constant}): Input should be a finite number"
        )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "the body is empty"),
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "expected a JSON object (an inference request), got an array"),
        (b'"inputs"', "expected a JSON object (an inference request), got a string"),
    ],
)
def test_a_body_that_is_no_request_is_400(
    client: TestClient, model: Any, body: bytes, reason: str
) -> None:
    response = client.post(infer_path(model[0]), content=body)
    assert response.status_code == 400
    assert reason in response.json()["error"]


def test_unknown_model_or_version_is_404(client: TestClient, model: Any) -> None:
    name, _, types = model
    payload = request(types, [CUSTOMER])
    for path, reason in (
        (
            infer_path("churn-classifer"),
            f"unknown model 'churn-classifer'; this server serves '{name}'",
        ),
        (infer_path(name, "999"), f"model '{name}' has no version '999' here"),
        ("/v2/models/other", "unknown model 'other'"),
        (f"/v2/models/{name}/versions/999/ready", "has no version '999'"),
    ):
        response = client.post(path, json=payload) if path.endswith("/infer") else client.get(path)
        assert response.status_code == 404, path
        assert reason in response.json()["error"]


def test_content_type_binary_and_size_rules(client: TestClient, model: Any) -> None:
    name, _, types = model
    body = json.dumps(request(types, [CUSTOMER]))
    path = infer_path(name)
    # the protocol's clients send no content type: JSON is assumed
    assert client.post(path, content=body).status_code == 200
    plain = client.post(path, content=body, headers={"content-type": "text/plain"})
    assert plain.status_code == 415 and "application/json" in plain.json()["error"]
    binary = client.post(path, content=body, headers={"Inference-Header-Content-Length": "10"})
    assert binary.status_code == 400 and "binary_data=False" in binary.json()["error"]
    big = client.post(path, content=body + " " * 70_000)
    assert big.status_code == 413 and "MAX_BODY_BYTES" in big.json()["error"]
    gzip = client.post(path, content=body, headers={"content-encoding": "gzip"})
    assert gzip.status_code == 415 and "Content-Encoding" in gzip.json()["error"]


def test_not_ready_is_503_until_a_model_is_loaded(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "missing" / "model.pkl", tmp_path)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v2/health/live").status_code == 200
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503 and ready.json()["error"].startswith("not ready")
        for response in (
            client.get("/v2/models/churn-classifier"),
            client.get("/v2/models/churn-classifier/ready"),
            client.post(infer_path("churn-classifier"), json={"inputs": []}),
        ):
            assert response.status_code == 503
            assert response.json()["error"].startswith("model not ready")


# ---------------------------------------------------------------------------- transports


def test_both_transports_answer_byte_identically(
    clients: tuple[TestClient, TestClient], model: Any
) -> None:
    """Apart from the fresh prediction ids, the fast path and the routes send the same bytes."""
    fast, routed = clients
    customers = [CUSTOMER, {**CUSTOMER, "internet_service": "Satellite"}]
    payload = request(model[2], customers, id="x")
    a, b = (c.post(infer_path(model[0]), json=payload) for c in clients)
    assert a.status_code == b.status_code == 200
    assert _ID.sub(b"ids", a.content) == _ID.sub(b"ids", b.content)
    assert routed.get("/metrics").status_code == fast.get("/metrics").status_code == 200


def test_columnar_and_row_requests_share_one_model_call() -> None:
    """A micro-batch holding V2 (columnar) and JSON (row) requests stays columnar, in order."""
    columnar = ColumnRows({"a": [1, 2], "b": ["x", "y"]}, 2)
    rows = [{"a": 3, "b": "z"}]
    joined = join_rows([columnar, rows, ColumnRows({"a": [4], "b": ["w"]}, 1)])
    assert isinstance(joined, ColumnRows)
    assert joined.columns == {"a": [1, 2, 3, 4], "b": ["x", "y", "z", "w"]}
    assert list(joined) == [
        {"a": 1, "b": "x"},
        {"a": 2, "b": "y"},
        {"a": 3, "b": "z"},
        {"a": 4, "b": "w"},
    ]
    assert join_rows([rows, rows]) == rows + rows  # JSON-only batches are untouched
    assert join_rows([columnar]) is columnar


def test_a_mixed_micro_batch_answers_each_request_as_alone(client: TestClient, model: Any) -> None:
    served = client.app.state.service.model  # type: ignore[attr-defined]
    customers = generate_customers(30, seed=9)[list(model[2])].dropna().to_dict("records")
    row_part = customers[:10]
    columnar = ColumnRows({n: [c[n] for c in customers[10:]] for n in model[2]}, 20)
    together = served.predict_rows(join_rows([row_part, columnar]))
    alone = [served.predict_rows(row_part), served.predict_rows(columnar)]
    assert together.probabilities == alone[0].probabilities + alone[1].probabilities
    assert np.array_equal(together.tiers, alone[0].tiers + alone[1].tiers)


# ---------------------------------------------------------------------------- fuzz

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_KEYS = st.sampled_from(
    ["id", "parameters", "inputs", "outputs", "name", "shape", "datatype", "data", "explain"]
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:3]):
            found += _paths(child, (*prefix, index))
    return found


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_no_mutation_of_a_valid_request_gets_a_5xx(
    client: TestClient, model: Any, data: st.DataObject
) -> None:
    """Start from a valid request and break it (replace, drop or add anything, anywhere):
    the answer is 200 or a 4xx with a reason, never a 5xx."""
    payload: Any = request(model[2], [CUSTOMER, CUSTOMER], id="f")
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(payload)))
        action = data.draw(st.sampled_from(["replace", "drop", "add"]))
        if not path:
            payload = data.draw(_JSON) if action == "replace" else payload
            continue
        *parent_path, last = path
        parent = payload
        for step in parent_path:
            parent = parent[step]
        if action == "replace":
            parent[last] = data.draw(_JSON)
        elif action == "drop":
            del parent[last]
        elif isinstance(parent, dict):
            parent[data.draw(_KEYS)] = data.draw(_JSON)
        else:
            parent.append(data.draw(_JSON))
    response = client.post(infer_path(model[0]), content=json.dumps(payload))
    assert response.status_code in (200, 400, 413), response.text
    if response.status_code != 200:
        error = response.json()["error"]
        assert isinstance(error, str) and error
