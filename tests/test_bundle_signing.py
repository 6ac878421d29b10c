"""Bundle trust: only a bundle signed with the configured key is unpickled, and only after its
signature, metadata rules and checksums all check out (issue 11, items 1 and 8)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from app.main import create_app
from app.model import ModelLoadError, load_model
from app.settings import Settings
from churn.bundle import (
    METADATA_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    BundleError,
    SigningKey,
    SigningKeyError,
    load_bundle,
    save_bundle,
    sha256_bytes,
    sign_bundle,
    signing_key_from_env,
    verify_bundle,
)
from churn.registry import download_bundle
from tests._tools import free_port
from tests.api_support import ADMIN_TOKEN, CUSTOMER, copy_bundle, make_settings, wait_until
from tests.conftest import ROOT, TEST_SIGNING_KEY, TrainedModel

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ATTACKER_KEY = SigningKey.from_text("an-attacker-s-own-key-of-enough-length-0000")


class _WritesMarker:
    """A pickle that runs code when loaded: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _edit_metadata(bundle_dir: Path, **changes: object) -> None:
    path = bundle_dir / METADATA_FILE
    metadata = json.loads(path.read_bytes())
    metadata.update(changes)
    path.write_text(json.dumps(metadata, indent=2))


def _plant_code(bundle_dir: Path, marker: Path) -> None:
    """Replace model.pkl with code-running bytes and update the checksum to match, as anyone
    who can write the bundle (or the registry's artifacts) can."""
    payload = pickle.dumps(_WritesMarker(marker))
    (bundle_dir / MODEL_FILE).write_bytes(payload)
    metadata = json.loads((bundle_dir / METADATA_FILE).read_bytes())
    metadata["files"][MODEL_FILE] = sha256_bytes(payload)
    (bundle_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2))


@pytest.fixture
def bundle_dir(trained_model: TrainedModel, tmp_path: Path) -> Path:
    return copy_bundle(trained_model.bundle_dir, tmp_path / "bundle").parent


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code-ran"


def test_the_planted_pickle_really_runs_code(tmp_path: Path) -> None:
    """Guards the tests below: the payload does write its marker when unpickled."""
    other = tmp_path / "proof"
    pickle.loads(pickle.dumps(_WritesMarker(other)))  # noqa: S301 (our own payload)
    assert other.exists()


# ---------------------------------------------------------------------------- signatures


def test_training_signs_the_bundle_and_logs_the_signature(trained_model: TrainedModel) -> None:
    signature = json.loads((trained_model.bundle_dir / SIGNATURE_FILE).read_text())
    key = SigningKey.from_text(TEST_SIGNING_KEY)
    assert signature["algorithm"] == "HMAC-SHA256"
    assert signature["key_id"] == key.key_id
    assert TEST_SIGNING_KEY not in (trained_model.bundle_dir / SIGNATURE_FILE).read_text()
    assert signature["signature"] == key.sign(
        (trained_model.bundle_dir / METADATA_FILE).read_bytes()
    )
    client = MlflowClient(trained_model.tracking_uri, trained_model.tracking_uri)
    logged = {a.path for a in client.list_artifacts(trained_model.result.run_id, "bundle")}
    assert "bundle/signature.json" in logged


def test_a_code_running_pickle_with_a_matching_checksum_is_refused(
    bundle_dir: Path, marker: Path
) -> None:
    _plant_code(bundle_dir, marker)
    with pytest.raises(BundleError, match=r"signature does not match metadata.json"):
        load_bundle(bundle_dir)
    assert not marker.exists()


def test_a_planted_bundle_re_signed_with_another_key_is_refused(
    bundle_dir: Path, marker: Path
) -> None:
    _plant_code(bundle_dir, marker)
    sign_bundle(bundle_dir, key=ATTACKER_KEY)
    with pytest.raises(BundleError, match=r"signed with another key"):
        load_bundle(bundle_dir)
    assert not marker.exists()


def test_the_api_refuses_a_planted_bundle_at_start_and_on_reload(
    bundle_dir: Path, marker: Path, tmp_path: Path, trained_model: TrainedModel
) -> None:
    planted = copy_bundle(bundle_dir, tmp_path / "planted").parent
    _plant_code(planted, marker)
    settings = make_settings(planted / MODEL_FILE, tmp_path)
    with pytest.raises(ModelLoadError, match="signature"):
        load_model(settings)  # the detail the API logs
    with TestClient(create_app(settings)) as client:
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["reason"] == "bundle failed verification"  # stable, for clients
    settings = make_settings(bundle_dir / MODEL_FILE, tmp_path, admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings)) as client:
        _plant_code(bundle_dir, marker)
        response = client.post("/admin/reload", headers=AUTH)
        assert response.status_code == 409
        assert response.json()["detail"]["reason"] == "bundle failed verification"
        answer = client.post("/predict", json=CUSTOMER)
        assert answer.json()["model_version"] == trained_model.result.model_version
    assert not marker.exists()


def test_an_unsigned_bundle_is_refused_before_any_other_file_is_read(
    bundle_dir: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plant_code(bundle_dir, marker)
    (bundle_dir / SIGNATURE_FILE).unlink()
    read: list[str] = []
    original = Path.read_bytes

    def recording(path: Path) -> bytes:
        read.append(path.name)
        return original(path)

    monkeypatch.setattr(Path, "read_bytes", recording)
    with pytest.raises(BundleError, match=r"unsigned and BUNDLE_SIGNING_KEY is set"):
        load_bundle(bundle_dir)
    assert read == [SIGNATURE_FILE]
    assert not marker.exists()


def test_a_wrong_key_is_refused(bundle_dir: Path) -> None:
    other = SigningKey.from_text("x" * 40)
    with pytest.raises(BundleError, match=r"signed with another key .* from BUNDLE_SIGNING_KEY"):
        load_bundle(bundle_dir, key=other)
    with pytest.raises(BundleError, match=r"signed with another key"):
        verify_bundle(bundle_dir, key=other)
    assert load_bundle(bundle_dir).version  # the right key still loads it


def test_metadata_changed_after_signing_is_refused(bundle_dir: Path) -> None:
    _edit_metadata(bundle_dir, model_version="99")
    with pytest.raises(BundleError, match=r"signature does not match metadata.json"):
        load_bundle(bundle_dir)
    # A forged signature document (right key id, made-up signature) is no better.
    forged = json.loads((bundle_dir / SIGNATURE_FILE).read_text())
    forged["signature"] = "0" * 64
    (bundle_dir / SIGNATURE_FILE).write_text(json.dumps(forged))
    with pytest.raises(BundleError, match=r"signature does not match"):
        load_bundle(bundle_dir)
    (bundle_dir / SIGNATURE_FILE).write_text('{"algorithm": "none", "key_id": "", "signature": ""}')
    with pytest.raises(BundleError, match=r"algorithm 'none' is not HMAC-SHA256"):
        load_bundle(bundle_dir)
    (bundle_dir / SIGNATURE_FILE).write_text("not json")
    with pytest.raises(BundleError, match=r"not a bundle signature file"):
        load_bundle(bundle_dir)


def test_without_a_key_bundles_load_with_a_warning(
    bundle_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (bundle_dir / SIGNATURE_FILE).unlink()
    with caplog.at_level("WARNING", logger="churn.bundle"):
        bundle = load_bundle(bundle_dir, key=None)
    assert bundle.pipeline is not None
    assert "WITHOUT signature verification" in caplog.text
    # Checksums still hold without a key.
    (bundle_dir / MODEL_FILE).write_bytes(b"\x80\x04 not the model")
    with pytest.raises(BundleError, match="SHA-256 mismatch"):
        load_bundle(bundle_dir, key=None)


def test_save_bundle_signs_and_never_leaves_a_stale_signature(
    trained_model: TrainedModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = load_bundle(trained_model.bundle_dir)
    metadata = {k: v for k, v in source.metadata.items() if k not in {"files", "format_version"}}
    target = tmp_path / "saved"
    save_bundle(target, source.pipeline, metadata, None, key=ATTACKER_KEY)
    assert load_bundle(target, key=ATTACKER_KEY).version == source.version
    with caplog.at_level("WARNING", logger="churn.bundle"):
        save_bundle(target, source.pipeline, metadata, None, key=None)
    assert not (target / SIGNATURE_FILE).exists()
    assert "UNSIGNED" in caplog.text
    with pytest.raises(BundleError, match="unsigned"):
        load_bundle(target)
    # Metadata serving would refuse is refused before anything is written.
    bad = tmp_path / "bad"
    with pytest.raises(BundleError, match=r"risk.decision_threshold"):
        save_bundle(bad, source.pipeline, {**metadata, "risk": {"decision_threshold": 7}}, None)
    assert not bad.exists() or not any(bad.iterdir())


def test_registry_copy_is_verified_too(trained_model: TrainedModel) -> None:
    uri = f"models:/churn-classifier/{trained_model.result.model_version}"
    bundle = download_bundle(trained_model.tracking_uri, uri)
    assert bundle.version == trained_model.result.model_version
    with pytest.raises(BundleError, match="signed with another key"):
        download_bundle(trained_model.tracking_uri, uri, key=ATTACKER_KEY)


def test_a_bundle_planted_in_the_registry_is_refused_by_the_api(
    trained_model: TrainedModel, bundle_dir: Path, marker: Path, tmp_path: Path
) -> None:
    """Whoever can write run artifacts can register a version whose bundle runs code: with
    MODEL_URI pointing at it, the API must refuse it without unpickling."""
    _plant_code(bundle_dir, marker)
    client = MlflowClient(trained_model.tracking_uri, trained_model.tracking_uri)
    run = client.get_run(trained_model.result.run_id)
    planted_run = client.create_run(run.info.experiment_id)
    client.log_artifacts(planted_run.info.run_id, str(bundle_dir), "bundle")
    client.set_terminated(planted_run.info.run_id)
    client.create_registered_model("churn-planted")
    version = client.create_model_version(
        "churn-planted", f"runs:/{planted_run.info.run_id}/bundle", planted_run.info.run_id
    )
    settings = make_settings(
        tmp_path / "unused" / MODEL_FILE,
        tmp_path,
        model_uri=f"models:/churn-planted/{version.version}",
        mlflow_tracking_uri=trained_model.tracking_uri,
    )
    with pytest.raises(ModelLoadError, match="signature does not match"):
        load_model(settings)  # the detail the API logs
    with TestClient(create_app(settings)) as api:
        assert wait_until(
            lambda: api.get("/ready").json()["reason"] != "the model is still loading"
        )
        ready = api.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["reason"] == "bundle failed verification"
    assert not marker.exists()


# ---------------------------------------------------------------------------- the key


def test_key_sources_and_their_errors(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(TEST_SIGNING_KEY + "\n")
    from_file = signing_key_from_env({"BUNDLE_SIGNING_KEY_FILE": str(key_file)})
    from_text = signing_key_from_env({"BUNDLE_SIGNING_KEY": TEST_SIGNING_KEY})
    assert from_file is not None and from_text is not None
    assert from_file.key_id == from_text.key_id
    assert TEST_SIGNING_KEY not in repr(from_file)
    assert signing_key_from_env({"BUNDLE_SIGNING_KEY": ""}) is None
    with pytest.raises(SigningKeyError, match=r"BUNDLE_SIGNING_KEY: .* 11 bytes; use at least 32"):
        signing_key_from_env({"BUNDLE_SIGNING_KEY": "short-value"})
    with pytest.raises(SigningKeyError, match="not both"):
        signing_key_from_env(
            {"BUNDLE_SIGNING_KEY": TEST_SIGNING_KEY, "BUNDLE_SIGNING_KEY_FILE": str(key_file)}
        )
    with pytest.raises(SigningKeyError, match=r"BUNDLE_SIGNING_KEY_FILE=.*missing: .*does not"):
        signing_key_from_env({"BUNDLE_SIGNING_KEY_FILE": str(tmp_path / "missing")})


def test_production_without_a_key_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUNDLE_SIGNING_KEY")
    with pytest.raises(ValidationError, match=r"ENVIRONMENT=production needs .*BUNDLE_SIGNING_KEY"):
        Settings(environment="production")
    assert Settings(environment="development").signing_key is None
    secret = "a-short-secret-value"
    with pytest.raises(ValidationError, match=r"use at least 32") as refused:
        Settings(environment="development", bundle_signing_key=secret)
    assert secret not in str(refused.value)
    monkeypatch.setenv("BUNDLE_SIGNING_KEY", TEST_SIGNING_KEY)
    settings = Settings(environment="production")
    assert settings.signing_key is not None
    assert settings.signing_key.key_id == SigningKey.from_text(TEST_SIGNING_KEY).key_id


def test_the_server_process_refuses_to_start_in_production_without_a_key(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUNDLE_SIGNING_KEY")}
    env.update(
        ENVIRONMENT="production",
        MODEL_PATH=str(trained_model.model_path),
        DATABASE_URL=f"sqlite:///{tmp_path / 'log.db'}",
    )
    argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(free_port())]
    result = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode != 0
    assert "BUNDLE_SIGNING_KEY" in result.stderr


def test_make_creates_a_private_key_once(tmp_path: Path) -> None:
    key_file = tmp_path / "secrets" / "bundle.key"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUNDLE_SIGNING_KEY")}
    argv = ["make", "--no-print-directory", "signing-key", f"SIGNING_KEY_FILE={key_file}"]
    subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)
    first = key_file.read_text()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert SigningKey.from_text(first).key_id  # long enough to be accepted
    subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)
    assert key_file.read_text() == first


# ---------------------------------------------------------------------------- metadata rules


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            {"risk": {"high": 0.75, "medium": 0.45, "decision_threshold": 7}},
            "risk.decision_threshold",
        ),
        ({"risk": {"high": 0.5, "medium": 0.6, "decision_threshold": 0.5}}, "medium .* high"),
        ({"risk": {"high": 0.75, "medium": 0.45, "decison": 0.5}}, "risk.decison"),
        ({"model_version": "1; DROP"}, "model_version"),
        ({"files": {"../../outside": "0" * 64}}, "is not a bundle file"),
    ],
)
def test_re_signed_metadata_is_still_validated(
    bundle_dir: Path, change: dict[str, object], named: str
) -> None:
    _edit_metadata(bundle_dir, **change)
    sign_bundle_unchecked(bundle_dir)
    with pytest.raises(BundleError, match=named):
        load_bundle(bundle_dir)


def test_a_feature_schema_training_would_refuse_is_refused(bundle_dir: Path) -> None:
    metadata = json.loads((bundle_dir / METADATA_FILE).read_text())
    for spec in metadata["feature_schema"]["features"]:
        if spec["name"] == "tenure":
            spec.update(min=80, max=10)
    _edit_metadata(bundle_dir, feature_schema=metadata["feature_schema"])
    sign_bundle_unchecked(bundle_dir)
    with pytest.raises(BundleError, match=r"feature_schema: .*tenure.*min .* greater than max"):
        load_bundle(bundle_dir)


def test_sign_bundle_refuses_to_bless_a_bad_bundle(bundle_dir: Path) -> None:
    _edit_metadata(bundle_dir, risk={"high": 0.75, "medium": 0.45, "decision_threshold": 7})
    with pytest.raises(BundleError, match=r"risk\.decision_threshold"):
        sign_bundle(bundle_dir)
    (bundle_dir / MODEL_FILE).write_bytes(b"other bytes")
    _edit_metadata(bundle_dir, risk={"high": 0.75, "medium": 0.45, "decision_threshold": 0.5})
    with pytest.raises(BundleError, match="SHA-256 mismatch"):
        sign_bundle(bundle_dir)


def test_an_invalid_threshold_on_reload_keeps_the_old_model_serving(
    bundle_dir: Path, tmp_path: Path, trained_model: TrainedModel
) -> None:
    settings = make_settings(bundle_dir / MODEL_FILE, tmp_path, admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings)) as client:
        _edit_metadata(
            bundle_dir,
            model_version="77",
            risk={"high": 0.75, "medium": 0.45, "decision_threshold": 7},
        )
        sign_bundle_unchecked(bundle_dir)
        with pytest.raises(ModelLoadError, match=r"risk\.decision_threshold"):
            load_model(settings)  # the detail the API logs
        response = client.post("/admin/reload", headers=AUTH)
        assert response.status_code == 409
        assert response.json()["detail"]["reason"] == "bundle failed verification"
        answer = client.post("/predict", json=CUSTOMER).json()
        assert answer["model_version"] == trained_model.result.model_version
        assert client.get("/model").json()["thresholds"]["decision_threshold"] == 0.5


def test_environment_overrides_follow_the_same_rules(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    settings = make_settings(trained_model.model_path, tmp_path, risk_high=0.3)  # < medium 0.45
    with pytest.raises(ModelLoadError) as refused:
        load_model(settings)
    assert "medium (0.45) must not exceed high (0.3)" in str(refused.value)
    assert "RISK_HIGH" in str(refused.value)
    with TestClient(create_app(settings)) as client:
        assert client.get("/ready").status_code == 503


def sign_bundle_unchecked(bundle_dir: Path) -> None:
    """Sign metadata.json as it is, as a key holder who made a mistake (or was fooled) would:
    the loader must still refuse values serving cannot use."""
    key = SigningKey.from_text(TEST_SIGNING_KEY)
    data = (bundle_dir / METADATA_FILE).read_bytes()
    document = {"algorithm": "HMAC-SHA256", "key_id": key.key_id, "signature": key.sign(data)}
    (bundle_dir / SIGNATURE_FILE).write_text(json.dumps(document))


# ---------------------------------------------------------------------------- temp dirs


def test_registry_loads_leave_no_directories_behind(
    trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    settings = make_settings(
        trained_model.model_path,
        tmp_path,
        model_uri=f"models:/churn-classifier/{trained_model.result.model_version}",
        mlflow_tracking_uri=trained_model.tracking_uri,
        admin_token=ADMIN_TOKEN,
    )
    with TestClient(create_app(settings)) as client:
        assert wait_until(lambda: client.get("/ready").status_code == 200)
        before = sorted(p.name for p in scratch.iterdir())
        for _ in range(5):
            assert client.post("/admin/reload", headers=AUTH).status_code == 200
        after = sorted(p.name for p in scratch.iterdir())
    assert after == before == []
