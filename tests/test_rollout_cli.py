"""The operator's rollout CLI against a real `mlflow server`: start (gated, verified), canary,
status, evaluate (paired log, reports, a real Pushgateway, Prometheus failing closed),
promote (the gated export path), abort.

Versions are registered as in tests/test_promotion.py (the session's trained pipeline, a run
with val_auc and its signed bundle), so nothing retrains here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

import promote_model
from churn.bundle import load_bundle
from churn.data import prepare_features
from churn.datagen import generate_customers
from churn.promotion import RELEASE_FILE
from churn.rollout import ROLLOUT_TAG, RolloutRecord
from monitoring.rollout import cli
from tests._tools import free_port
from tests.conftest import TrainedModel, write_config
from tests.metric_contract import ROLLOUT_METRICS
from tests.mlflow_server import mlflow_server
from tests.prometheus_fixture import start_pushgateway, stop_process
from tests.rollout_support import write_pairs
from tests.test_promotion import Outcome, Registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("rollout-server")
    with mlflow_server(f"sqlite:///{tmp / 'backend.db'}", tmp) as url:
        yield url


@dataclass
class Rollout(Registry):
    """A registered model of its own, driven through rollout.py's main in-process."""

    def rollout_config(self) -> Path:
        return write_config(
            self.tmp,
            mlflow={"tracking_uri": self.url, "model_name": self.name},
            gate={"min_val_auc": 0.8, "max_auc_drop": 0.01},
            rollout={"min_pairs": 500},
        )

    def run(self, *args: str) -> Outcome:
        code = cli.main(["--config", str(self.rollout_config()), *args])
        out = self.capsys.readouterr()
        return Outcome(code, out.out, out.err)

    def record(self, version: str) -> RolloutRecord:
        tags = self.client.get_model_version(self.name, version).tags
        return RolloutRecord.from_json(tags[ROLLOUT_TAG])

    @property
    def log_url(self) -> str:
        return f"sqlite:///{self.tmp / 'log.db'}"


@pytest.fixture
def rollout(
    server: str,
    trained_model: TrainedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Rollout:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PROMETHEUS_URL", raising=False)
    monkeypatch.setenv("ROLLOUT_ACTOR", "pytest")
    source = load_bundle(trained_model.bundle_dir)
    return Rollout(server, f"churn-{uuid.uuid4().hex[:8]}", tmp_path, source, capsys)


def with_production(rollout: Rollout) -> str:
    v1 = rollout.register(0.9)
    assert rollout.promote("--version", v1).returncode == 0
    return v1


def one_line(outcome: Outcome) -> None:
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert len(outcome.stderr.strip().splitlines()) == 1, outcome.stderr


# --------------------------------------------------------------------------- registry actions


def test_start_canary_status_abort(rollout: Rollout) -> None:
    v1 = with_production(rollout)
    release = (rollout.artifacts / RELEASE_FILE).read_text()
    v2 = rollout.register(0.9)
    started = rollout.run("start", "--version", v2, "--reason", "retrained on May")
    assert started.returncode == 0, started.stderr
    assert f"v{v2} is @challenger in shadow" in started.stdout
    assert rollout.alias("challenger") == v2
    assert rollout.alias() == v1  # the champion stays
    assert (rollout.artifacts / RELEASE_FILE).read_text() == release  # nothing exported
    assert rollout.gate_tags(v2)["gate.verdict"] == "passed"
    record = rollout.record(v2)
    assert (record.stage, record.champion, record.share) == ("shadow", v1, 0.0)
    assert record.guardrails["max_error_ratio"] == 0.02
    assert record.history[0].by == "pytest" and record.reason == "retrained on May"

    canary = rollout.run("canary", "--share", "0.2")
    assert canary.returncode == 0, canary.stderr
    assert (rollout.record(v2).stage, rollout.record(v2).share) == ("canary", 0.2)
    default = rollout.run("canary")  # rollout.canary_share
    assert rollout.record(v2).share == 0.10, default.stderr
    assert rollout.record(v2).paired  # the champion scores the challenger's rows, paired
    unpaired = rollout.run("canary", "--unpaired")
    assert unpaired.returncode == 0 and "unpaired (routing alone)" in unpaired.stdout
    assert not rollout.record(v2).paired
    rollout.run("canary", "--share", "0.1")
    assert not rollout.record(v2).paired  # a share change keeps the choice
    assert rollout.run("canary", "--paired").returncode == 0 and rollout.record(v2).paired

    status = rollout.run("status")
    assert status.returncode == 0
    assert f"@production v{v1}" in status.stdout and "canary at 10%" in status.stdout
    as_json = json.loads(rollout.run("status", "--json").stdout)
    assert as_json["challenger"] == v2 and as_json["record"]["stage"] == "canary"

    v3 = rollout.register(0.9)
    busy = rollout.run("start", "--version", v3)
    assert busy.returncode == cli.EXIT_ERROR
    one_line(busy)
    assert f"v{v2} is already in rollout (canary)" in busy.stderr
    assert rollout.alias("challenger") == v2

    bad_share = rollout.run("canary", "--share", "1.5")
    assert bad_share.returncode == cli.EXIT_ERROR and "--share" in bad_share.stderr

    aborted = rollout.run("abort", "--reason", "not now")
    assert aborted.returncode == 0, aborted.stderr
    assert rollout.alias("challenger") is None
    record = rollout.record(v2)
    assert record.stage == "rejected" and record.reason == "not now"
    stages = [s.stage for s in record.history]
    assert stages == ["shadow", "canary", "canary", "canary", "canary", "canary", "rejected"]
    assert "no rollout in progress" in rollout.run("status").stdout
    nothing = rollout.run("abort", "--reason", "again")
    assert nothing.returncode == cli.EXIT_ERROR and "no @challenger" in nothing.stderr

    # a new rollout may replace an active one, which ends as rejected
    assert rollout.run("start", "--version", v2).returncode == 0
    replaced = rollout.run("start", "--version", v3, "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert rollout.alias("challenger") == v3
    assert rollout.record(v2).stage == "rejected"
    assert rollout.record(v2).reason == f"replaced by v{v3}"


def test_start_refuses_a_gate_refused_or_unverifiable_version(rollout: Rollout) -> None:
    with_production(rollout)
    weak = rollout.register(0.7)
    refused = rollout.run("start", "--version", weak)
    assert refused.returncode == cli.EXIT_REJECT
    one_line(refused)
    assert "gate refused" in refused.stderr and "below the minimum" in refused.stderr
    assert rollout.gate_tags(weak)["gate.verdict"] == "refused"
    assert rollout.alias("challenger") is None
    assert ROLLOUT_TAG not in rollout.client.get_model_version(rollout.name, weak).tags

    tampered = rollout.register(0.9, tamper=True)
    failed = rollout.run("start", "--version", tampered)
    assert failed.returncode == cli.EXIT_ERROR
    one_line(failed)
    assert "failed verification" in failed.stderr
    assert rollout.alias("challenger") is None
    assert ROLLOUT_TAG not in rollout.client.get_model_version(rollout.name, tampered).tags

    same = rollout.run("start")  # the newest is the tampered one; production itself:
    assert same.returncode == cli.EXIT_ERROR
    assert rollout.run("start", "--version", rollout.alias() or "").returncode == cli.EXIT_ERROR


# --------------------------------------------------------------------------- evidence


@pytest.fixture(scope="module")
def traffic(trained_model: TrainedModel) -> tuple[pd.DataFrame, np.ndarray]:
    """2,000 fresh customers and the trained model's probabilities for them."""
    customers = generate_customers(2000, seed=31).reset_index(drop=True)
    bundle = load_bundle(trained_model.bundle_dir)
    frame = prepare_features(customers, bundle.schema.numeric, bundle.schema.categorical)
    return customers, np.round(bundle.pipeline.predict_proba(frame)[:, 1], 4)


def test_evaluate_reports_then_promote_goes_through_the_gated_export(
    rollout: Rollout, traffic: tuple[pd.DataFrame, np.ndarray], tmp_path: Path
) -> None:
    customers, p = traffic
    v1 = with_production(rollout)
    v2 = rollout.register(0.9)
    assert rollout.run("start", "--version", v2).returncode == 0
    # the same model retrained: its scores differ a little, its ranking hardly at all
    rng = np.random.default_rng(3)
    q = np.clip(np.round(p + rng.normal(0, 0.01, len(p)), 4), 0, 1)
    write_pairs(rollout.log_url, customers.iloc[:1500], v1, v2, p[:1500], q[:1500], labelled=200)

    early_report = rollout.tmp / "early.json"
    early = rollout.run("evaluate", "--database-url", rollout.log_url, "--json", str(early_report))
    assert early.returncode == 3, early.stdout + early.stderr
    assert "UNDECIDED" in early.stdout and "200 labelled pairs (< 500 needed)" in early.stdout
    undecided = json.loads(early_report.read_text())["decision"]
    assert undecided["verdict"] == "undecided" and undecided["labels_needed"] >= 300
    assert "labels still needed (estimate): about" in early.stdout
    assert rollout.record(v2).evidence["decision"] == "undecided"  # kept for `status`
    assert "evidence so far" in rollout.run("status").stdout

    not_yet = rollout.run("promote", "--database-url", rollout.log_url)
    assert not_yet.returncode == 3 and "not promoted" in not_yet.stdout
    assert rollout.alias() == v1

    write_pairs(rollout.log_url, customers.iloc[1500:], v1, v2, p[1500:], q[1500:], labelled=500)
    gateway_port = free_port()
    gateway = start_pushgateway(gateway_port, tmp_path)
    try:
        report = tmp_path / "reports"
        done = rollout.run(
            "evaluate",
            "--database-url",
            rollout.log_url,
            "--json",
            str(report / "rollout.json"),
            "--html",
            str(report / "rollout.html"),
            "--pushgateway",
            f"127.0.0.1:{gateway_port}",
        )
        assert done.returncode == 0, done.stdout + done.stderr
        body = httpx.get(f"http://127.0.0.1:{gateway_port}/metrics", timeout=10).text
    finally:
        stop_process(gateway)
    assert "PROMOTE: non-inferior" in done.stdout
    payload = json.loads((report / "rollout.json").read_text())
    assert payload["pairs"] == 2000 and payload["labelled_pairs"] == 700
    assert payload["decision"]["verdict"] == "promote"
    assert payload["auc"]["method"] == "delong" and payload["auc"]["lower"] >= -0.005
    assert payload["agreement"]["tier_agreement"] > 0.9
    assert {s["feature"] for s in payload["segments"]} >= {"contract_type", "tenure"}
    assert "<h1" in (report / "rollout.html").read_text()
    pushed = {
        (s.name, s.labels.get("decision", "")): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.labels.get("job") == "rollout_evaluation"
    }
    assert pushed[("rollout_decision", "promote")] == 1
    assert pushed[("rollout_decision", "reject")] == 0
    assert pushed[("rollout_labelled_pairs", "")] == 700
    assert pushed[("rollout_auc_difference_lower", "")] >= -0.005
    assert {n for n, _ in pushed if n.startswith("rollout_")} == ROLLOUT_METRICS

    promoted = rollout.run("promote", "--database-url", rollout.log_url)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert rollout.alias() == v2 and rollout.alias("challenger") is None
    release = json.loads((rollout.artifacts / RELEASE_FILE).read_text())
    assert release["version"] == v2
    assert load_bundle(rollout.artifacts).version == v2  # verified, signed, in place
    record = rollout.record(v2)
    assert record.stage == "promoted" and record.evidence["decision"] == "promote"
    assert rollout.client.get_model_version(rollout.name, v1).tags.get("archived") == "true"


def test_a_worse_challenger_is_rejected_and_cannot_be_promoted(
    rollout: Rollout, traffic: tuple[pd.DataFrame, np.ndarray]
) -> None:
    customers, p = traffic
    v1 = with_production(rollout)
    v2 = rollout.register(0.9)
    assert rollout.run("start", "--version", v2).returncode == 0
    assert rollout.run("canary", "--share", "0.1").returncode == 0
    rng = np.random.default_rng(4)
    worse = np.clip(np.round(p + rng.normal(0, 0.25, len(p)), 4), 0, 1)
    # in canary the challenger answered and the champion scored in shadow
    write_pairs(rollout.log_url, customers, v2, v1, worse, p, labelled=1000)
    report = rollout.tmp / "worse.json"
    judged = rollout.run("evaluate", "--database-url", rollout.log_url, "--json", str(report))
    assert judged.returncode == cli.EXIT_REJECT, judged.stdout + judged.stderr
    assert "REJECT: significantly worse" in judged.stdout
    evidence = json.loads(report.read_text())
    assert (evidence["canary_pairs"], evidence["shadow_pairs"]) == (2000, 0)
    refused = rollout.run("promote", "--database-url", rollout.log_url)
    assert refused.returncode == cli.EXIT_REJECT
    assert rollout.alias() == v1 and rollout.alias("challenger") == v2


def test_prometheus_given_but_unreachable_is_an_error_never_fine(
    rollout: Rollout, traffic: tuple[pd.DataFrame, np.ndarray]
) -> None:
    customers, p = traffic
    v1 = with_production(rollout)
    v2 = rollout.register(0.9)
    assert rollout.run("start", "--version", v2).returncode == 0
    write_pairs(rollout.log_url, customers, v1, v2, p, p, labelled=1000)
    dead = f"http://127.0.0.1:{free_port()}"
    judged = rollout.run("evaluate", "--database-url", rollout.log_url, "--prometheus", dead)
    assert judged.returncode == cli.EXIT_ERROR
    one_line(judged)
    assert "Prometheus" in judged.stderr and "unreachable" in judged.stderr
    missing = rollout.run("evaluate", "--database-url", f"sqlite:///{rollout.tmp / 'typo.db'}")
    assert missing.returncode == cli.EXIT_ERROR and "typo.db" in missing.stderr
    assert not (rollout.tmp / "typo.db").exists()


def test_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for code in ("0  promote", "1  reject", "2  error", "3  undecided"):
        assert code in out
    assert promote_model.EXIT_OK == 0
