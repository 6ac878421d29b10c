"""The Open Inference Protocol as a Triton / KServe client sees it: the `tritonclient[http]`
package's client against a real `uvicorn --workers 2`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from churn.bundle import load_bundle
from churn.datagen import generate_customers
from tests.api_support import metric_value
from tests.conftest import TrainedModel
from tests.processes import api_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("v2-client")
    metrics_dir = tmp / "prometheus"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "MODEL_PATH": str(trained_model.model_path),
        "MODEL_REQUIRED": "true",
        "DATABASE_URL": f"sqlite:///{tmp / 'log.db'}",
        "LOG_LEVEL": "WARNING",
        "ENVIRONMENT": "test",
    }
    with api_server(env, tmp / "uvicorn.log", workers=2) as url:
        yield url


@pytest.fixture(scope="module")
def schema(trained_model: TrainedModel) -> Any:
    return load_bundle(trained_model.bundle_dir)


def _client(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url.removeprefix("http://"))


def _inputs(bundle: Any, customers: list[dict[str, Any]]) -> list[triton.InferInput]:
    inputs = []
    for spec in bundle.schema.features:
        values = [c[spec.name] for c in customers]
        if spec.kind == "categorical":
            array, datatype = np.array(values, dtype=object), "BYTES"
        elif spec.integer:
            array, datatype = np.array(values, dtype=np.int64), "INT64"
        else:
            array, datatype = np.array(values, dtype=np.float64), "FP64"
        tensor = triton.InferInput(spec.name, [len(customers)], datatype)
        tensor.set_data_from_numpy(array, binary_data=False)
        inputs.append(tensor)
    return inputs


def _customers(bundle: Any, n: int, seed: int) -> list[dict[str, Any]]:
    frame = generate_customers(n, seed=seed)[bundle.schema.names].dropna()
    records: list[dict[str, Any]] = frame.to_dict("records")
    integer = [s.name for s in bundle.schema.features if s.kind == "numeric" and s.integer]
    return [{k: int(v) if k in integer else v for k, v in c.items()} for c in records]


def test_server_and_model_probes(server: str, schema: Any) -> None:
    client = _client(server)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata()["extensions"] == []
    assert client.is_model_ready(schema.name)
    assert client.is_model_ready(schema.name, schema.version)
    assert not client.is_model_ready(schema.name, "999")
    assert not client.is_model_ready("no-such-model")


def test_model_metadata(server: str, schema: Any) -> None:
    meta = _client(server).get_model_metadata(schema.name, schema.version)
    assert meta["name"] == schema.name
    assert meta["versions"] == [schema.version]
    assert [i["name"] for i in meta["inputs"]] == schema.schema.names
    kinds = {i["name"]: i["datatype"] for i in meta["inputs"]}
    for spec in schema.schema.features:
        expected = "BYTES" if spec.kind == "categorical" else "INT64" if spec.integer else "FP64"
        assert kinds[spec.name] == expected
    assert all(i["shape"] == [-1] for i in meta["inputs"])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        _client(server).get_model_metadata("nope")


def test_infer_equals_the_batch_api_on_both_workers(server: str, schema: Any) -> None:
    customers = _customers(schema, 60, seed=21)
    batch = httpx.post(f"{server}/predict/batch", json={"customers": customers}, timeout=30)
    expected = batch.json()["predictions"]
    before = metric_value(httpx.get(f"{server}/metrics").text, "predictions_total")
    calls = 8
    for k in range(calls):
        # A new client (connection) each time, so the kernel spreads calls over both workers.
        client = _client(server)
        version = schema.version if k % 2 else ""
        outputs = (
            None
            if k % 2
            else [
                triton.InferRequestedOutput(name, binary_data=False)
                for name in ("churn_probability", "churn_prediction", "risk_tier", "prediction_id")
            ]
        )
        result = client.infer(
            schema.name,
            _inputs(schema, customers),
            model_version=version,
            outputs=outputs,
            request_id=f"call-{k}",
            parameters={"note": "from tritonclient"},
        )
        client.close()
        response = result.get_response()
        assert response["id"] == f"call-{k}"
        assert response["model_version"] == schema.version
        probabilities = result.as_numpy("churn_probability")
        assert probabilities.tolist() == [p["churn_probability"] for p in expected]
        assert result.as_numpy("churn_prediction").tolist() == [
            p["churn_prediction"] for p in expected
        ]
        tiers = [t.decode() if isinstance(t, bytes) else t for t in result.as_numpy("risk_tier")]
        assert tiers == [p["risk_tier"] for p in expected]
        assert len(set(result.as_numpy("prediction_id").tolist())) == len(customers)
    text = httpx.get(f"{server}/metrics").text
    assert metric_value(text, "predictions_total") == before + calls * len(customers)
    workers = {w["pid"] for w in httpx.get(f"{server}/model", timeout=10).json()["workers"]}
    assert len(workers) == 2


def test_a_client_mistake_reaches_the_client_as_the_reason(server: str, schema: Any) -> None:
    customers = _customers(schema, 5, seed=2)
    inputs = _inputs(schema, customers)[:-1]  # one feature short
    with pytest.raises(InferenceServerException, match="missing input") as refused:
        _client(server).infer(schema.name, inputs)
    assert refused.value.status() == "400"
    binary = _inputs(schema, customers)
    binary[0].set_data_from_numpy(np.array([c[schema.schema.names[0]] for c in customers]))
    with pytest.raises(InferenceServerException, match="binary tensor data is not supported"):
        _client(server).infer(schema.name, binary)
