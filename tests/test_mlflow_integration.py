"""Train -> register -> gate -> promote -> rollback against a real `mlflow server`.

Runs twice: with a sqlite backend and with this machine's PostgreSQL as the backend store.
The CLIs run as subprocesses, exactly as a data scientist or CI would run them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

import promote_model
import train
from churn.bundle import load_bundle
from churn.datagen import generate_customers
from tests.conftest import ROOT, write_config
from tests.mlflow_server import mlflow_server, postgres_database

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(params=["sqlite", "postgresql"])
def tracking_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        with mlflow_server(f"sqlite:///{tmp_path / 'backend.db'}", tmp_path) as url:
            yield url
    else:
        with postgres_database("mlflow_it") as db_url, mlflow_server(db_url, tmp_path) as url:
            yield url


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run train.py / promote_model.py's main() in-process (one subprocess run is below)."""

    def run(script: str, *args: str, cwd: Path, tracking_uri: str) -> Outcome:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        monkeypatch.chdir(cwd)
        entry = {"train.py": train.main, "promote_model.py": promote_model.main}[script]
        code = entry(list(args))
        out = capsys.readouterr()
        return Outcome(code, out.out, out.err)

    return run


def train_ok(cli: Any, config: Path, cwd: Path, tracking_uri: str) -> None:
    """Train with `config` through the in-process CLI; it must succeed."""
    outcome = cli("train.py", "--config", str(config), cwd=cwd, tracking_uri=tracking_uri)
    assert outcome.returncode == 0, outcome.stderr


def _subprocess_cli(
    script: str, *args: str, cwd: Path, tracking_uri: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def served(workdir: Path) -> str:
    """The version in artifacts/: release.json and the verified bundle must agree."""
    release = json.loads((workdir / "artifacts" / "release.json").read_text())
    bundle = load_bundle(workdir / "artifacts")
    assert release["version"] == bundle.version and release["run_id"] == bundle.metadata["run_id"]
    assert release["alias"] == "production"
    return str(release["version"])


def test_train_promote_gate_rollback(tracking_server: str, tmp_path: Path, cli) -> None:
    generate_customers(2500, seed=21).to_csv(tmp_path / "churn_train.csv", index=False)
    good = write_config(tmp_path, gate={"min_val_auc": 0.8, "max_auc_drop": 0.0})
    client = MlflowClient(tracking_uri=tracking_server, registry_uri=tracking_server)
    name = "churn-classifier"

    # v1: trained against the server (env wins over the config's sqlite URI), promoted.
    trained = _subprocess_cli(
        "train.py", "--config", str(good), cwd=tmp_path, tracking_uri=tracking_server
    )
    assert trained.returncode == 0, trained.stderr
    assert f"MLflow at {tracking_server}" in trained.stderr
    # Training exports a candidate; only promotion writes what is served.
    assert load_bundle(tmp_path / "candidates" / "v1").version == "1"
    assert not (tmp_path / "artifacts").exists()
    promoted = cli(
        "promote_model.py", "--config", str(good), cwd=tmp_path, tracking_uri=tracking_server
    )
    assert promoted.returncode == 0, promoted.stderr
    assert str(client.get_model_version_by_alias(name, "production").version) == "1"
    assert served(tmp_path) == "1"
    v1_files = {p.name: p.read_bytes() for p in (tmp_path / "artifacts").iterdir()}
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "# Model card: churn-classifier v1" in card
    auc = client.get_run(client.get_model_version(name, "1").run_id).data.metrics["val_auc"]
    assert f"| ROC AUC | {auc:.4f} |" in card
    assert "Rows:** 2,500" in card
    serving = next(line for line in card.splitlines() if "Serving" in line)
    # exact, where ONNX (float32 thresholds) may differ by more than its limit on a small model
    assert "Serving:** compiled forest" in serving and "max |Δp| 0.0e+00" in serving, serving
    assert "Fallback: " in serving

    # v2: a much weaker model; the gate refuses it against production and says why.
    weak = tmp_path / "weak.yaml"
    weak.write_text(
        good.read_text()
        .replace("n_estimators: 30", "n_estimators: 1")
        .replace("max_depth: 8", "max_depth: 1")
    )
    train_ok(cli, weak, tmp_path, tracking_server)
    refused = cli(
        "promote_model.py", "--config", str(weak), cwd=tmp_path, tracking_uri=tracking_server
    )
    assert refused.returncode == 1
    assert "gate failed" in refused.stderr and "below production v1" in refused.stderr
    assert str(client.get_model_version_by_alias(name, "production").version) == "1"
    # The refused v2 is a candidate on disk, never what `make serve` serves.
    assert (tmp_path / "candidates" / "v2" / "model.pkl").exists()
    assert {p.name: p.read_bytes() for p in (tmp_path / "artifacts").iterdir()} == v1_files
    assert client.get_model_version(name, "2").tags["gate.verdict"] == "refused"

    # staging works the same way; the gate still measures against production.
    staged = cli(
        "promote_model.py",
        "--config",
        str(good),
        "--version",
        "1",
        "--alias",
        "staging",
        cwd=tmp_path,
        tracking_uri=tracking_server,
    )
    assert staged.returncode == 0, staged.stderr
    assert str(client.get_model_version_by_alias(name, "staging").version) == "1"

    # v3: as good as v1; promoted, v1 archived; then rolled back to v1.
    train_ok(cli, good, tmp_path, tracking_server)
    assert (
        cli(
            "promote_model.py",
            "--config",
            str(good),
            "--version",
            "3",
            cwd=tmp_path,
            tracking_uri=tracking_server,
        ).returncode
        == 0
    )
    assert str(client.get_model_version_by_alias(name, "production").version) == "3"
    assert served(tmp_path) == "3"
    assert client.get_model_version(name, "1").tags.get("archived") == "true"
    assert "v3" in (tmp_path / "MODEL_CARD.md").read_text().splitlines()[0]

    rolled = cli(
        "promote_model.py",
        "--config",
        str(good),
        "--rollback",
        cwd=tmp_path,
        tracking_uri=tracking_server,
    )
    assert rolled.returncode == 0, rolled.stderr
    assert "v3 -> v1" in rolled.stdout
    assert str(client.get_model_version_by_alias(name, "production").version) == "1"
    assert served(tmp_path) == "1"
    assert "archived" not in client.get_model_version(name, "1").tags
    assert client.get_model_version(name, "3").tags.get("archived") == "true"
    assert "v1" in (tmp_path / "MODEL_CARD.md").read_text().splitlines()[0]

    # Nothing older to return to: a clear error, exit 2.
    again = cli(
        "promote_model.py",
        "--config",
        str(good),
        "--rollback",
        cwd=tmp_path,
        tracking_uri=tracking_server,
    )
    assert again.returncode == 2
    assert "no version that held 'production' before v1" in again.stderr


def test_gate_floor_and_dry_run(tracking_server: str, tmp_path: Path, cli) -> None:
    generate_customers(1500, seed=22).to_csv(tmp_path / "churn_train.csv", index=False)
    strict = write_config(tmp_path, gate={"min_val_auc": 0.999})
    train_ok(cli, strict, tmp_path, tracking_server)
    result = cli(
        "promote_model.py", "--config", str(strict), cwd=tmp_path, tracking_uri=tracking_server
    )
    assert result.returncode == 1
    assert "is below the minimum 0.9990" in result.stderr
    client = MlflowClient(tracking_uri=tracking_server, registry_uri=tracking_server)
    assert not client.get_registered_model("churn-classifier").aliases

    lenient = write_config(tmp_path, gate={"min_val_auc": 0.5})
    dry = cli(
        "promote_model.py",
        "--config",
        str(lenient),
        "--dry-run",
        cwd=tmp_path,
        tracking_uri=tracking_server,
    )
    assert dry.returncode == 0 and "dry run" in dry.stdout
    assert not client.get_registered_model("churn-classifier").aliases

    missing = cli(
        "promote_model.py",
        "--config",
        str(lenient),
        "--version",
        "42",
        cwd=tmp_path,
        tracking_uri=tracking_server,
    )
    assert missing.returncode == 2 and "has no version 42" in missing.stderr
