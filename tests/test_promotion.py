"""Promotion fails closed, and what is served is what was promoted (issues 11.3/11.4/11.10, 12.1).

Everything runs against a real `mlflow server` (one per module, one registered model per
test). Versions are registered the way training registers them (a run with `val_auc`, its
bundle written by churn.bundle.save_bundle and logged as the run's `bundle/` artifacts), but
from the session's trained pipeline, so no test retrains. Registry outages come from a real
HTTP proxy answering 503 or from a port nobody listens on: the MLflow client is never mocked.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

import promote_model
from churn.bundle import ModelBundle, load_bundle, save_bundle
from churn.promotion import GATE_TAGS, HISTORY_TAG, RELEASE_FILE
from churn.registry import (
    LOCK_SUFFIX,
    PromotionLocked,
    RegistryUnavailable,
    client,
    promotion_lock,
    version_by_alias,
)
from tests._tools import free_port
from tests.conftest import ROOT, TrainedModel, write_config
from tests.mlflow_server import mlflow_server
from tests.registry_proxy import registry_proxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("promotion-server")
    with mlflow_server(f"sqlite:///{tmp / 'backend.db'}", tmp) as url:
        yield url


@dataclass
class Registry:
    """One registered model of its own on the shared server, and a config pointing at it."""

    url: str
    name: str
    tmp: Path
    source: ModelBundle
    capsys: pytest.CaptureFixture[str]

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.url, registry_uri=self.url)

    def config_path(self, tracking_uri: str | None = None, **gate: float) -> Path:
        return write_config(
            self.tmp,
            mlflow={"tracking_uri": tracking_uri or self.url, "model_name": self.name},
            gate={"min_val_auc": 0.8, "max_auc_drop": 0.01, **gate},
        )

    @property
    def artifacts(self) -> Path:
        return self.tmp / "artifacts"

    def register(
        self, val_auc: float | None, bundle: bool = True, tamper: bool = False, onnx: bool = True
    ) -> str:
        """A new version whose run logged `val_auc` and (unless told not to) its bundle."""
        c = self.client
        experiment = c.get_experiment_by_name("promotion-tests")
        experiment_id = (
            experiment.experiment_id if experiment else c.create_experiment("promotion-tests")
        )
        run_id = c.create_run(experiment_id).info.run_id
        if val_auc is not None:
            c.log_metric(run_id, "val_auc", val_auc)
        c.set_terminated(run_id)
        if not c.search_registered_models(f"name='{self.name}'"):
            c.create_registered_model(self.name)
        version = str(c.create_model_version(self.name, f"runs:/{run_id}/bundle", run_id).version)
        if bundle:
            directory = self.tmp / f"bundle-v{version}"
            metadata = {
                **self.source.metadata,
                "model_name": self.name,
                "model_version": version,
                "run_id": run_id,
            }
            onnx_bytes = self.source.onnx_bytes if onnx else None
            save_bundle(directory, self.source.pipeline, metadata, onnx_bytes)
            if tamper:
                with (directory / "model.pkl").open("ab") as fh:
                    fh.write(b"tampered")
            c.log_artifacts(run_id, str(directory), artifact_path="bundle")
        self.capsys.readouterr()  # MLflow's own chatter is not the CLI's output
        return version

    def promote(self, *args: str, tracking_uri: str | None = None) -> Outcome:
        """promote_model.main in-process, as the CLI runs it; its lines come from capsys."""
        config = str(self.config_path(tracking_uri))
        code = promote_model.main(["--config", config, *args])
        out = self.capsys.readouterr()
        return Outcome(code, out.out, out.err)

    def alias(self, alias: str = "production") -> str | None:
        return version_by_alias(client(self.url), self.name, alias)

    def history(self, alias: str = "production") -> list[str]:
        raw = self.client.get_registered_model(self.name).tags.get(HISTORY_TAG.format(alias=alias))
        return json.loads(raw) if raw else []

    def served(self) -> tuple[dict[str, Any], ModelBundle]:
        release = json.loads((self.artifacts / RELEASE_FILE).read_text())
        return release, load_bundle(self.artifacts)

    def gate_tags(self, version: str) -> dict[str, str]:
        tags = self.client.get_model_version(self.name, version).tags
        return {k: v for k, v in tags.items() if k.startswith("gate.")}


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def registry(
    server: str,
    trained_model: TrainedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Registry:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    source = load_bundle(trained_model.bundle_dir)
    return Registry(server, f"churn-{uuid.uuid4().hex[:8]}", tmp_path, source, capsys)


def one_line(outcome: Outcome) -> None:
    """A failure is exactly one line on stderr, never a traceback."""
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert len(outcome.stderr.strip().splitlines()) == 1, outcome.stderr


# --------------------------------------------------------------------------- the gate (11.3)


def test_nan_or_missing_val_auc_is_refused_and_the_verdict_recorded(registry: Registry) -> None:
    nan = registry.register(float("nan"))
    refused = registry.promote("--version", nan)
    assert refused.returncode == promote_model.EXIT_GATE_REFUSED
    one_line(refused)
    assert "val_auc is nan, not a finite number" in refused.stderr
    assert registry.alias() is None
    assert not registry.artifacts.exists()  # nothing staged, nothing served
    tags = registry.gate_tags(nan)
    assert set(tags) == set(GATE_TAGS)
    assert tags["gate.verdict"] == "refused" and tags["gate.val_auc"] == "nan"
    assert "not a finite number" in tags["gate.reasons"]

    absent = registry.register(None)
    refused = registry.promote("--version", absent)
    assert refused.returncode == promote_model.EXIT_GATE_REFUSED
    assert "val_auc is missing from the run" in refused.stderr
    assert registry.gate_tags(absent)["gate.val_auc"] == "missing"
    assert registry.alias() is None

    good = registry.register(0.93)
    passed = registry.promote("--version", good)
    assert passed.returncode == 0, passed.stderr
    tags = registry.gate_tags(good)
    assert tags["gate.verdict"] == "passed" and tags["gate.val_auc"] == "0.9300"
    assert tags["gate.production_version"] == "none" and tags["gate.reasons"] == "none"
    assert datetime.fromisoformat(tags["gate.checked_at"]) <= datetime.now(UTC)


def test_production_without_a_finite_val_auc_is_an_error_not_a_skipped_check(
    registry: Registry,
) -> None:
    v1 = registry.register(0.93)
    assert registry.promote().returncode == 0
    run_id = str(registry.client.get_model_version(registry.name, v1).run_id)
    registry.client.log_metric(run_id, "val_auc", float("nan"), step=1)  # the latest value
    before = (registry.artifacts / "model.pkl").read_bytes()

    v2 = registry.register(0.85)
    outcome = registry.promote("--version", v2)

    assert outcome.returncode == promote_model.EXIT_ERROR
    one_line(outcome)
    assert f"production {registry.name} v{v1} has no finite val_auc" in outcome.stderr
    assert registry.alias() == v1
    assert registry.served()[0]["version"] == v1
    assert (registry.artifacts / "model.pkl").read_bytes() == before


@pytest.mark.parametrize("problem", ["no bundle", "tampered bundle"])
def test_bundle_is_checked_before_the_alias_moves(registry: Registry, problem: str) -> None:
    v1 = registry.register(0.93)
    assert registry.promote().returncode == 0
    v2 = registry.register(0.94, bundle=problem != "no bundle", tamper=problem == "tampered bundle")

    outcome = registry.promote("--version", v2)

    assert outcome.returncode == promote_model.EXIT_ERROR
    one_line(outcome)
    expected = "has no 'bundle/metadata.json' artifact" if problem == "no bundle" else "SHA-256"
    assert expected in outcome.stderr
    assert registry.alias() == v1
    assert registry.history() == [v1]
    assert registry.served()[0]["version"] == v1
    assert [p.name for p in registry.artifacts.iterdir() if p.name.startswith(".")] == []


def test_unwritable_model_card_is_found_before_the_alias_moves(registry: Registry) -> None:
    registry.register(0.93)
    blocker = registry.tmp / "not-a-directory"
    blocker.write_text("a file where the card's directory should be")

    outcome = registry.promote("--model-card", str(blocker / "MODEL_CARD.md"))

    assert outcome.returncode == promote_model.EXIT_ERROR
    one_line(outcome)
    assert "cannot write the model card" in outcome.stderr
    assert registry.alias() is None
    assert not (registry.artifacts / RELEASE_FILE).exists()


# --------------------------------------------------------------------------- served = promoted


def test_artifacts_hold_what_was_promoted_through_refusal_and_rollback(registry: Registry) -> None:
    v1 = registry.register(0.93)
    promoted = registry.promote()
    assert promoted.returncode == 0, promoted.stderr
    release, bundle = registry.served()
    run_v1 = registry.client.get_model_version(registry.name, v1).run_id
    assert {k: release[k] for k in ("model_name", "alias", "version", "run_id")} == {
        "model_name": registry.name,
        "alias": "production",
        "version": v1,
        "run_id": run_v1,
    }
    assert datetime.fromisoformat(release["promoted_at"]) <= datetime.now(UTC)
    assert bundle.version == v1
    card = (registry.tmp / "MODEL_CARD.md").read_text()
    assert f"# Model card: {registry.name} v{v1}" in card
    served_v1 = {p.name: p.read_bytes() for p in registry.artifacts.iterdir()}

    # A worse candidate: refused; artifacts/ and the card are untouched.
    worse = registry.register(0.90)
    refused = registry.promote()
    assert refused.returncode == promote_model.EXIT_GATE_REFUSED
    assert f"below production v{v1}" in refused.stderr
    assert {p.name: p.read_bytes() for p in registry.artifacts.iterdir()} == served_v1
    assert registry.gate_tags(worse)["gate.production_version"] == v1

    # Files of the old bundle that the new one lacks do not survive the export.
    assert (registry.artifacts / "model.onnx").exists()
    v3 = registry.register(0.935, onnx=False)
    assert registry.promote("--version", v3).returncode == 0
    assert registry.served()[0]["version"] == v3
    assert registry.served()[1].version == v3
    assert not (registry.artifacts / "model.onnx").exists()
    assert registry.client.get_model_version(registry.name, v1).tags.get("archived") == "true"

    rolled = registry.promote("--rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert f"v{v3} -> v{v1}" in rolled.stdout
    assert registry.alias() == v1 and registry.history() == [v1]
    release, bundle = registry.served()
    assert release["version"] == v1 and bundle.version == v1
    assert f"v{v1}" in (registry.tmp / "MODEL_CARD.md").read_text().splitlines()[0]

    # Artifacts lost (make clean): promoting the version already in place exports it again.
    for path in registry.artifacts.iterdir():
        path.unlink()
    again = registry.promote("--version", v1)
    assert again.returncode == 0 and "already is" in again.stdout
    assert registry.served()[0]["version"] == v1


def test_staging_and_dry_run_leave_artifacts_alone(registry: Registry) -> None:
    v1 = registry.register(0.93)
    dry = registry.promote("--dry-run")
    assert dry.returncode == 0 and "dry run" in dry.stdout
    assert registry.alias() is None and not registry.artifacts.exists()
    assert registry.gate_tags(v1) == {}  # a dry run writes nothing, not even the verdict

    staged = registry.promote("--alias", "staging")
    assert staged.returncode == 0, staged.stderr
    assert registry.alias("staging") == v1
    assert not registry.artifacts.exists()


# --------------------------------------------------------------------------- registry errors (11.4)


def test_alias_absent_reads_as_none_for_the_real_error_codes(
    registry: Registry, trained_model: TrainedModel
) -> None:
    registry.register(0.93)
    for uri in (registry.url, trained_model.tracking_uri):  # REST and the embedded store
        c = client(uri)
        name = registry.name if uri == registry.url else trained_model.result.model_name
        assert version_by_alias(c, name, "no-such-alias") is None
        assert version_by_alias(c, f"no-such-model-{uuid.uuid4().hex[:6]}", "production") is None


def test_registry_503_on_the_alias_aborts_instead_of_skipping_the_bar(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The defect of 11.4: production unreadable used to mean "no production"; a model 0.09
    worse then went live. Now the promotion stops with exit 2 and changes nothing."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    v1 = registry.register(0.97)
    assert registry.promote().returncode == 0
    worse = registry.register(0.88)  # above the floor, far below production

    def alias_reads(method: str, path: str) -> bool:
        return "/registered-models/alias" in path

    with registry_proxy(registry.url, fail=alias_reads) as proxy:
        started = time.monotonic()
        outcome = registry.promote("--version", worse, tracking_uri=proxy)
        elapsed = time.monotonic() - started

    assert outcome.returncode == promote_model.EXIT_ERROR
    one_line(outcome)
    assert "registry error while reading" in outcome.stderr
    assert elapsed < 60
    assert registry.alias() == v1
    assert registry.served()[0]["version"] == v1
    assert registry.gate_tags(worse) == {}  # never judged
    # the lock was released despite the error
    assert not registry.client.search_registered_models(f"name='{registry.name}{LOCK_SUFFIX}'")


def test_registry_down_or_failing_is_exit_2_with_credentials_redacted(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    registry.register(0.93)
    dead = f"http://user:s3cret@127.0.0.1:{free_port()}"  # nothing listens there
    refused = registry.promote(tracking_uri=dead)
    assert refused.returncode == promote_model.EXIT_ERROR
    one_line(refused)
    assert "s3cret" not in refused.stderr and "registry error" in refused.stderr

    with registry_proxy(registry.url) as proxy:  # every request answered 503
        with pytest.raises(RegistryUnavailable):
            version_by_alias(client(proxy), registry.name, "production")
        failing = registry.promote(tracking_uri=proxy)
    assert failing.returncode == promote_model.EXIT_ERROR
    one_line(failing)
    assert registry.alias() is None


# --------------------------------------------------------------------------- concurrency (11.10)


def test_a_held_lock_refuses_a_promotion_and_a_stale_one_is_broken(registry: Registry) -> None:
    v1 = registry.register(0.93)
    with promotion_lock(client(registry.url), registry.name, "a test holding it"):
        blocked = registry.promote()
        with (
            pytest.raises(PromotionLocked),
            promotion_lock(client(registry.url), registry.name, "a second holder"),
        ):
            pass
    assert blocked.returncode == promote_model.EXIT_LOCKED
    one_line(blocked)
    assert "another promotion" in blocked.stderr and "a test holding it" in blocked.stderr
    assert registry.alias() is None and not registry.artifacts.exists()

    # A lock left by a process that died an hour ago does not block forever.
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds")
    registry.client.create_registered_model(
        f"{registry.name}{LOCK_SUFFIX}",
        tags={"token": "dead", "holder": "gone:1", "acquired_at": an_hour_ago},
    )
    assert registry.promote().returncode == 0
    assert registry.alias() == v1
    assert not registry.client.search_registered_models(f"name='{registry.name}{LOCK_SUFFIX}'")


_RACER = """
import pathlib, sys, time
sys.path.insert(0, sys.argv[1])
import mlflow.tracking  # the slow imports happen before the start line
import promote_model
ready, go = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.005)
sys.exit(promote_model.main(sys.argv[4:]))
"""


def test_two_concurrent_promotions_exactly_one_wins(registry: Registry) -> None:
    v1, v2 = registry.register(0.93), registry.register(0.935)
    config = registry.config_path()
    go = registry.tmp / "go"
    racers = []
    for version in (v1, v2):
        ready = registry.tmp / f"ready-{version}"
        argv = [str(ROOT), str(ready), str(go), "--config", str(config), "--version", version]
        racers.append(
            (
                ready,
                subprocess.Popen(
                    [sys.executable, "-c", _RACER, *argv],
                    cwd=registry.tmp,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    deadline = time.monotonic() + 180
    while not all(ready.exists() for ready, _ in racers):
        assert time.monotonic() < deadline, "the racing processes never got ready"
        assert all(p.poll() is None for _, p in racers), [p.communicate() for _, p in racers]
        time.sleep(0.05)
    go.touch()
    results = {}
    for version, (_, process) in zip((v1, v2), racers, strict=True):
        out, err = process.communicate(timeout=300)
        results[version] = (process.returncode, out, err)

    codes = sorted(code for code, _, _ in results.values())
    assert codes == [promote_model.EXIT_OK, promote_model.EXIT_LOCKED], results
    winner = next(v for v, (code, _, _) in results.items() if code == 0)
    loser = next(v for v, (code, _, _) in results.items() if code != 0)
    _, _, loser_err = results[loser]
    assert "Traceback" not in loser_err and len(loser_err.strip().splitlines()) == 1, loser_err
    assert "another promotion" in loser_err
    assert registry.alias() == winner
    assert registry.history() == [winner]
    assert registry.served()[0]["version"] == winner
    assert registry.gate_tags(loser) == {}
    assert not registry.client.search_registered_models(f"name='{registry.name}{LOCK_SUFFIX}'")
    assert not math.isnan(float(registry.gate_tags(winner)["gate.val_auc"]))
