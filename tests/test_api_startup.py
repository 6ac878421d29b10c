"""Start-up never blocks on the registry, failures read as stable reasons without
credentials, a bundle that appears later is served, and a served version that is not its
alias's target is flagged."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from churn.redact import redact
from tests._tools import free_port
from tests.api_support import CUSTOMER, copy_bundle, make_settings, metric_value, wait_until
from tests.conftest import TrainedModel


def test_redact_masks_user_info_and_secret_parameters() -> None:
    text = (
        "API request to http://user:secret@10.0.0.1:5000/api/2.0/mlflow failed; "
        "postgresql+psycopg://churn:pw@db/log; https://tok3n@host/x?token=abc&page=2"
    )
    masked = redact(text)
    for secret in ("secret", "user:", "churn:pw", "tok3n", "abc"):
        assert secret not in masked
    assert "http://***@10.0.0.1:5000/api/2.0/mlflow" in masked
    assert "page=2" in masked
    assert redact("no credentials in http://host:5000/x") == "no credentials in http://host:5000/x"


def _private_store(trained_model: TrainedModel, tmp_path: Path) -> str:
    """A private copy of the session's MLflow store: aliases set here stay here."""
    db = Path(trained_model.tracking_uri.removeprefix("sqlite:///"))
    return f"sqlite:///{shutil.copy(db, tmp_path / 'mlflow.db')}"


def test_unreachable_registry_never_blocks_and_never_leaks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tracking = f"http://someone:secret@127.0.0.1:{free_port()}"  # nothing listens there
    settings = make_settings(
        Path("unused"),
        tmp_path,
        model_uri="models:/churn-classifier@production",
        mlflow_tracking_uri=tracking,
        model_retry_max_interval=0.5,
    )
    started = time.monotonic()
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200
        # MLflow's own retries would hold start-up for minutes; the bound is generous.
        assert time.monotonic() - started < 10
        assert client.head("/health").status_code == 200
        assert wait_until(lambda: "reason" in client.get("/ready").json(), timeout=30)
        assert wait_until(
            lambda: client.get("/ready").json()["reason"] == "model registry unreachable",
            timeout=30,
        ), client.get("/ready").json()
        answers = [
            client.get("/ready"),
            client.post("/predict", json=CUSTOMER),
            client.post("/predict/batch", json={"customers": [CUSTOMER]}),
            client.get("/model"),
        ]
    for answer in answers:
        assert answer.status_code == 503
        assert "secret" not in answer.text
        assert "someone" not in answer.text
        assert "127.0.0.1" not in answer.text
    assert "model registry unreachable" in answers[1].json()["detail"]
    log = capsys.readouterr()
    assert "http://***@127.0.0.1" in log.out  # the detail is logged, redacted
    assert "secret" not in log.out + log.err


def test_a_missing_alias_is_named_and_its_arrival_served_without_a_watcher(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    from churn.registry import client as registry_client

    name, version = trained_model.result.model_name, trained_model.result.model_version
    tracking = _private_store(trained_model, tmp_path)
    settings = make_settings(
        Path("unused"),
        tmp_path,
        model_uri=f"models:/{name}@nowhere",
        mlflow_tracking_uri=tracking,
        model_retry_max_interval=0.5,
        model_watch_interval=0,
    )
    with TestClient(create_app(settings)) as client:
        expected = f"no model version with alias 'nowhere' (model '{name}')"
        assert wait_until(lambda: client.get("/ready").json().get("reason") == expected), (
            client.get("/ready").json()
        )
        registry_client(tracking).set_registered_model_alias(name, "nowhere", version)
        assert wait_until(lambda: client.get("/ready").status_code == 200, timeout=30)
        assert client.get("/health").json()["model_alias"] == "nowhere"


def test_a_bundle_copied_later_is_served_without_a_restart(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    target = tmp_path / "later"
    settings = make_settings(target / "model.pkl", tmp_path, model_retry_max_interval=0.5)
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["reason"] == "no model bundle at MODEL_PATH"
        shutil.copytree(trained_model.bundle_dir, target)
        assert wait_until(lambda: client.get("/ready").status_code == 200, timeout=30)
        answer = client.post("/predict", json=CUSTOMER)
        assert answer.status_code == 200
        assert answer.json()["model_version"] == trained_model.result.model_version


def _release(bundle_dir: Path, **values: Any) -> None:
    (bundle_dir / "release.json").write_text(json.dumps(values))


def test_a_served_version_that_is_not_the_alias_target_is_flagged(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    from churn.registry import client as registry_client

    result = trained_model.result
    bundle = copy_bundle(trained_model.bundle_dir, tmp_path / "bundle")
    _release(
        bundle.parent,
        model_name=result.model_name,
        alias="production",
        version=result.model_version,
        run_id=result.run_id,
        promoted_at="2026-11-30T00:00:00Z",
    )
    tracking = _private_store(trained_model, tmp_path)
    mlflow = registry_client(tracking)
    newer = mlflow.create_model_version(
        result.model_name, f"runs:/{result.run_id}/model", run_id=result.run_id
    )
    mlflow.set_registered_model_alias(result.model_name, "production", newer.version)
    settings = make_settings(
        bundle, tmp_path, mlflow_tracking_uri=tracking, model_watch_interval=0.2
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").json()["model_alias"] == "production"

        def flagged() -> bool:
            text = client.get("/metrics").text
            return metric_value(text, "model_alias_mismatch", alias="production") == 1

        assert wait_until(flagged, timeout=30)
        model = client.get("/model").json()
        assert model["model_alias"] == "production"
        assert model["alias_check"] == {"status": "mismatch", "alias_target": str(newer.version)}
        # The alias comes back to the served version: the watcher's next check clears it.
        mlflow.set_registered_model_alias(result.model_name, "production", result.model_version)
        assert wait_until(lambda: not flagged(), timeout=30)
        assert client.get("/model").json()["alias_check"]["status"] == "match"


def test_a_release_file_for_another_version_is_not_believed(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    bundle = copy_bundle(trained_model.bundle_dir, tmp_path / "bundle")
    _release(bundle.parent, model_name="x", alias="production", version="999")
    with TestClient(create_app(make_settings(bundle, tmp_path))) as client:
        assert client.get("/health").json()["model_alias"] is None
        assert client.get("/model").json()["alias_check"]["status"] == "not checked"
