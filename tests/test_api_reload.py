"""Loading, readiness and hot reload: bad bundles never replace a good one."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from churn.bundle import sign_bundle
from tests.api_support import (
    ADMIN_TOKEN,
    CUSTOMER,
    copy_bundle,
    make_settings,
    metric_value,
    wait_until,
)
from tests.conftest import TrainedModel

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def set_version(bundle_dir: Path, version: str) -> None:
    """Re-version a bundle and re-sign it with the tests' key, as a key holder would."""
    path = bundle_dir / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["model_version"] = version
    path.write_text(json.dumps(metadata))
    sign_bundle(bundle_dir)


def tamper(bundle_dir: Path) -> None:
    with (bundle_dir / "model.pkl").open("ab") as fh:
        fh.write(b"tampered")


@pytest.fixture
def bundle(trained_model: TrainedModel, tmp_path: Path) -> Path:
    return copy_bundle(trained_model.bundle_dir, tmp_path / "bundle")


def test_reload_swaps_to_a_good_new_bundle(
    bundle: Path, tmp_path: Path, trained_model: TrainedModel
) -> None:
    settings = make_settings(bundle, tmp_path, admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings)) as client:
        old = trained_model.result.model_version
        assert client.post("/predict", json=CUSTOMER).json()["model_version"] == old
        set_version(bundle.parent, "99")
        response = client.post("/admin/reload", headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "99"
        assert response.json()["previous_version"] == old
        assert client.post("/predict", json=CUSTOMER).json()["model_version"] == "99"
        text = client.get("/metrics").text
        assert metric_value(text, "model_info", model_version="99") == 1
        assert metric_value(text, "model_info", model_version=old) == 0


def test_bad_bundle_keeps_the_old_model_serving(
    bundle: Path, tmp_path: Path, trained_model: TrainedModel
) -> None:
    settings = make_settings(bundle, tmp_path, admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings)) as client:
        tamper(bundle.parent)
        response = client.post("/admin/reload", headers=AUTH)
        assert response.status_code == 409
        detail = response.json()["detail"]
        # A stable reason for the client; the exception's text goes to the log only.
        assert detail["reason"] == "bundle failed verification"
        assert "keeps serving" in detail["message"]
        answer = client.post("/predict", json=CUSTOMER)
        assert answer.status_code == 200
        assert answer.json()["model_version"] == trained_model.result.model_version
        assert client.get("/ready").status_code == 200
        text = client.get("/metrics").text
        assert metric_value(text, "model_reloads_total", result="failure") == 1


def test_reload_needs_the_token(bundle: Path, tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(bundle, tmp_path, admin_token=ADMIN_TOKEN))) as c:
        assert c.post("/admin/reload").status_code == 401
        wrong = c.post("/admin/reload", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"] == "Bearer"
        assert c.post("/admin/reload", headers={"Authorization": ADMIN_TOKEN}).status_code == 401


def test_reload_is_disabled_without_a_token(bundle: Path, tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(bundle, tmp_path))) as client:
        assert client.post("/admin/reload", headers=AUTH).status_code == 404


def test_zero_failed_requests_during_reloads(bundle: Path, tmp_path: Path) -> None:
    settings = make_settings(bundle, tmp_path, admin_token=ADMIN_TOKEN)
    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()
    with TestClient(create_app(settings)) as client:

        def hammer() -> None:
            while not stop.is_set():
                response = client.post("/predict", json=CUSTOMER)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.add(response.json()["model_version"])

        workers = [threading.Thread(target=hammer) for _ in range(4)]
        for worker in workers:
            worker.start()
        try:
            for version in ("10", "11", "12"):
                set_version(bundle.parent, version)
                assert client.post("/admin/reload", headers=AUTH).status_code == 200
            tamper(bundle.parent)
            assert client.post("/admin/reload", headers=AUTH).status_code == 409
            wait_until(lambda: len(statuses) > 50)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
    assert statuses
    assert set(statuses) == {200}
    assert "12" in versions


def test_missing_model_means_not_ready(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "nowhere" / "model.pkl", tmp_path)
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["reason"] == "no model bundle at MODEL_PATH"
        assert client.post("/predict", json=CUSTOMER).status_code == 503
        assert client.get("/model").status_code == 503


def test_tampered_model_at_start_is_not_ready(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper(bundle.parent)
    with TestClient(create_app(make_settings(bundle, tmp_path))) as client:
        assert client.get("/ready").json()["reason"] == "bundle failed verification"
    # The operator finds the detail in the (JSON, stdout) log.
    assert "SHA-256 mismatch" in capsys.readouterr().out


def test_model_required_refuses_to_start(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "missing.pkl", tmp_path, model_required=True)
    with pytest.raises(RuntimeError, match="MODEL_REQUIRED"), TestClient(create_app(settings)):
        pass


def test_every_backend_serves_the_same_tiers(bundle: Path, tmp_path: Path) -> None:
    customers = [{**CUSTOMER, "tenure": t} for t in range(0, 72, 4)]
    answers = {}
    for backend, served in (("auto", "forest"), ("onnx", "onnx"), ("sklearn", "sklearn")):
        settings = make_settings(bundle, tmp_path / backend, inference_backend=backend)
        (tmp_path / backend).mkdir()
        with TestClient(create_app(settings)) as client:
            model = client.get("/model").json()
            assert model["backend"] == served, model["backend_reason"]
            body = client.post("/predict/batch", json={"customers": customers}).json()
            answers[backend] = [p["risk_tier"] for p in body["predictions"]]
    assert answers["auto"] == answers["onnx"] == answers["sklearn"]


def test_registry_watcher_follows_the_production_alias(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    from churn.registry import client as registry_client

    # A private copy of the session's MLflow store: new versions and aliases stay here.
    db = Path(trained_model.tracking_uri.removeprefix("sqlite:///"))
    tracking_uri = f"sqlite:///{shutil.copy(db, tmp_path / 'mlflow.db')}"
    mlflow = registry_client(tracking_uri)
    name, version = trained_model.result.model_name, trained_model.result.model_version
    mlflow.set_registered_model_alias(name, "production", version)
    settings = make_settings(
        Path("unused"),
        tmp_path,
        model_uri=f"models:/{name}@production",
        mlflow_tracking_uri=tracking_uri,
        model_watch_interval=0.2,
    )
    with TestClient(create_app(settings)) as client:
        # A registry model loads in the background: ready soon, not at once.
        assert wait_until(lambda: client.get("/ready").status_code == 200, timeout=30)
        assert client.get("/ready").json()["model_version"] == version
        model = client.get("/model").json()
        assert model["source"] == f"models:/{name}@production"
        assert model["model_alias"] == "production"
        assert client.get("/health").json()["model_alias"] == "production"
        new = mlflow.create_model_version(
            name, f"runs:/{trained_model.result.run_id}/model", run_id=trained_model.result.run_id
        )
        mlflow.set_registered_model_alias(name, "production", new.version)

        def reloaded() -> bool:
            text = client.get("/metrics").text
            return metric_value(text, "model_reloads_total", result="success") >= 2

        assert wait_until(reloaded, timeout=30)


def test_reload_names_the_workers_that_did_not_follow(bundle: Path, tmp_path: Path) -> None:
    from app.workers import StateDir, WorkerRecord

    state = tmp_path / "state"
    settings = make_settings(
        bundle, tmp_path, admin_token=ADMIN_TOKEN, model_state_dir=state, reload_wait_timeout=1
    )
    shutil.copy(bundle, bundle.parent.parent / "good.pkl")
    with TestClient(create_app(settings)) as client:
        tamper(bundle.parent)
        assert client.post("/admin/reload", headers=AUTH).status_code == 409
        assert not (state / "generation.json").exists()  # a refused reload asks no one
        shutil.copy(bundle.parent.parent / "good.pkl", bundle)
        set_version(bundle.parent, "42")
        # A live process that claims to be a worker and never follows (the test's parent).
        laggard = os.getppid()

        def heartbeat() -> None:
            StateDir(state, stale_after=60).write(
                WorkerRecord(pid=laggard, status="serving", generation=0, heartbeat=time.time())
            )

        heartbeat()
        body = client.post("/admin/reload", headers=AUTH).json()
        assert body["generation"] == 1
        assert body["all_workers_swapped"] is False
        assert body["not_swapped"] == [
            {"pid": laggard, "model_version": None, "reason": "did not follow the reload in time"}
        ]
        heartbeat()
        assert {w["pid"] for w in client.get("/model").json()["workers"]} == {
            os.getpid(),
            laggard,
        }
