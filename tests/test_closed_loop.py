"""The closed loop: drift + labels -> retrain -> gate -> promote -> the API follows.

Decision tests run the real CLI against a copy of the session's MLflow store and a SQLite
prediction log written directly (no server). The end-to-end test drives a real `mlflow
server`, a real uvicorn API following @production, drifted traffic with feedback, and the
closed loop as a subprocess, and watches the running API switch to the new version.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from app.ids import RandomHex
from churn.bundle import load_bundle
from churn.config import load_config
from churn.data import prepare_features
from churn.datagen import generate_customers, generate_drifted
from churn.prediction_log import (
    PredictionBatch,
    create_tables,
    make_engine,
    record_feedback,
    write_batches,
)
from monitoring import closed_loop
from tests.api_support import Prober, wait_until
from tests.conftest import ROOT, TrainedModel, write_config
from tests.mlflow_server import mlflow_server
from tests.processes import api_server
from tests.rollout_support import FEATURES, api_env, as_request

# --------------------------------------------------------------------------- helpers


def write_log(
    database_url: str,
    customers: pd.DataFrame,
    version: str,
    probabilities: np.ndarray,
    labelled: int,
) -> None:
    """Log `customers` as served by `version`; the first `labelled` rows get their outcome."""
    engine = make_engine(database_url)
    try:
        create_tables(engine)
        values = customers[FEATURES].astype(object).where(customers[FEATURES].notna(), None)
        batch = PredictionBatch(
            batch_id=RandomHex().batch_id(),
            created_at=time.time(),
            model_version=version,
            columns={name: values[name].tolist() for name in FEATURES},
            probabilities=probabilities.tolist(),
            tiers=["LOW"] * len(customers),
        )
        write_batches(engine, [batch])
        outcomes = customers["churned"].astype(int).tolist()
        for pid, outcome in list(zip(batch.ids, outcomes, strict=True))[:labelled]:
            record_feedback(engine, pid, bool(outcome))
    finally:
        engine.dispose()


@pytest.fixture
def registry(trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A private copy of the session's MLflow store with @production on the trained model."""
    from churn.registry import client

    db = Path(trained_model.tracking_uri.removeprefix("sqlite:///"))
    uri = f"sqlite:///{shutil.copy(db, tmp_path / 'mlflow.db')}"
    client(uri).set_registered_model_alias(
        trained_model.result.model_name, "production", trained_model.result.model_version
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def served(trained_model: TrainedModel, customers: pd.DataFrame) -> np.ndarray:
    """The trained model's probabilities, as the API would have logged them."""
    bundle = load_bundle(trained_model.bundle_dir)
    schema = bundle.schema
    frame = prepare_features(customers, schema.numeric, schema.categorical)
    return np.round(bundle.pipeline.predict_proba(frame)[:, 1], 4)


def log_served(
    trained_model: TrainedModel,
    tmp_path: Path,
    customers: pd.DataFrame,
    labelled: int,
    version: str | None = None,
) -> str:
    """A prediction log in `tmp_path` holding `customers` as the trained model served them
    (logged under `version`, default the trained one); returns its URL."""
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    version = version or trained_model.result.model_version
    write_log(log_url, customers, version, served(trained_model, customers), labelled=labelled)
    return log_url


def run_cli(trained_model: TrainedModel, log_url: str, *extra: str) -> int:
    """Run the closed loop in-process (its lines go to capsys); return its exit code."""
    return closed_loop.main(
        [
            "--config",
            str(trained_model.config_path),
            "--since",
            "1h",
            "--database-url",
            log_url,
            *extra,
        ]
    )


def versions(uri: str, name: str) -> list[str]:
    from churn.registry import client

    return sorted(v.version for v in client(uri).search_model_versions(f"name='{name}'"))


# --------------------------------------------------------------------------- decisions


def test_no_drift_means_no_retrain(
    trained_model: TrainedModel,
    registry: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    customers = generate_customers(600, seed=3)
    log_url = log_served(trained_model, tmp_path, customers, labelled=600)
    before = versions(registry, trained_model.result.model_name)
    report = tmp_path / "cycle.json"

    code = run_cli(trained_model, log_url, "--min-labelled", "100", "--json", str(report))

    assert code == closed_loop.EXIT_OK
    out = capsys.readouterr().out
    assert "no feature drift" in out
    assert "nothing to do" in out
    result = json.loads(report.read_text())
    assert result["action"] == "none"
    assert result["current_rows"] == 600
    assert result["candidate_version"] is None
    assert versions(registry, trained_model.result.model_name) == before
    assert not list(trained_model.config.data.train_path.parent.glob("retrain-*.csv"))


def test_drift_with_too_few_labels_waits(
    trained_model: TrainedModel,
    registry: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    customers = generate_drifted("month_to_month_shift", 600, seed=5)
    log_url = log_served(trained_model, tmp_path, customers, labelled=40)
    before = versions(registry, trained_model.result.model_name)
    report = tmp_path / "cycle.json"

    code = run_cli(trained_model, log_url, "--min-labelled", "300", "--json", str(report))

    assert code == closed_loop.EXIT_OK
    out = capsys.readouterr().out
    assert "only 40 labelled rows (< 300)" in out
    result = json.loads(report.read_text())
    assert result["action"] == "wait"
    assert "contract_type" in result["drifted"]
    assert versions(registry, trained_model.result.model_name) == before


def test_dry_run_decides_to_retrain_but_trains_nothing(
    trained_model: TrainedModel,
    registry: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    customers = generate_drifted("month_to_month_shift", 600, seed=5)
    log_url = log_served(trained_model, tmp_path, customers, labelled=600)
    before = versions(registry, trained_model.result.model_name)
    report = tmp_path / "cycle.json"

    code = run_cli(
        trained_model, log_url, "--min-labelled", "300", "--dry-run", "--json", str(report)
    )

    assert code == closed_loop.EXIT_OK
    assert "dry run: would retrain" in capsys.readouterr().out
    assert json.loads(report.read_text())["action"] == "retrain"
    assert versions(registry, trained_model.result.model_name) == before


def test_rows_served_by_another_version_are_not_judged(
    trained_model: TrainedModel,
    registry: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Traffic a previous model served (and a retrain may already have used) is left out."""
    customers = generate_drifted("month_to_month_shift", 600, seed=5)
    log_url = log_served(trained_model, tmp_path, customers, labelled=600, version="999")

    code = run_cli(trained_model, log_url, "--min-labelled", "100")

    assert code == closed_loop.EXIT_INSUFFICIENT
    out = capsys.readouterr().out
    assert "insufficient data: nothing judged" in out
    assert "(0 current rows)" in out
    assert "no feature drift" not in out


def test_a_missing_prediction_log_is_an_error(
    trained_model: TrainedModel,
    registry: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "prediction_log.db"

    code = run_cli(trained_model, f"sqlite:///{missing}")

    assert code == closed_loop.EXIT_ERROR
    assert str(missing) in capsys.readouterr().err
    assert not missing.exists()


def refusing_config(trained_model: TrainedModel, tmp_path: Path) -> Path:
    """The session's config with its own training data copy and a gate no model can pass."""
    raw = yaml.safe_load(trained_model.config_path.read_text())
    train_path = shutil.copy(trained_model.config.data.train_path, tmp_path / "train.csv")
    raw["data"]["train_path"] = str(train_path)
    raw["export"]["artifacts_dir"] = str(tmp_path / "artifacts")
    raw["export"]["candidates_dir"] = str(tmp_path / "candidates")
    raw["gate"]["min_val_auc"] = 0.999  # no model of this data can reach it
    raw["closed_loop"] = {"promotion": "direct"}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    return config_path


def test_gate_refusal_is_remembered_cleaned_up_and_backed_off(
    trained_model: TrainedModel,
    registry: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A refused retrain: exit 1, production kept, its CSV removed, the version tagged; the
    same window is never retrained; a new window waits out the backoff, then is tried."""
    from churn.registry import client, version_by_alias

    name = trained_model.result.model_name
    config_path = refusing_config(trained_model, tmp_path)
    customers = generate_drifted("month_to_month_shift", 600, seed=5)
    log_url = log_served(trained_model, tmp_path, customers, labelled=600)
    report = tmp_path / "cycle.json"
    args = ["--config", str(config_path), "--since", "1h", "--database-url", log_url]
    args += ["--min-labelled", "300", "--json", str(report)]

    # 1. Drift and labels: retrain, the gate refuses.
    code = closed_loop.main(args)

    assert code == closed_loop.EXIT_GATE_REFUSED
    out = capsys.readouterr().out
    assert "gate failed, production stays v" in out
    assert "is below the minimum 0.9990" in out
    result = json.loads(report.read_text())
    refused = result["candidate_version"]
    assert refused is not None
    assert result["promoted"] is False
    assert result["consecutive_refusals"] == 1
    assert result["retrain_data"] is None  # the refused cycle's CSV is gone
    assert not list(tmp_path.glob("retrain-*.csv*"))
    mlflow = client(registry)
    assert version_by_alias(mlflow, name, "production") == trained_model.result.model_version
    assert not (tmp_path / "artifacts").exists()  # a refused bundle is not published
    window = result["window"]
    assert mlflow.get_model_version(name, refused).tags["closed_loop.refused_window"] == window
    assert f"closed_loop.refused.{window}" in mlflow.get_registered_model(name).tags
    before = versions(registry, name)

    # 2. The same window again: nothing is trained.
    assert closed_loop.main(args) == closed_loop.EXIT_OK
    out = capsys.readouterr().out
    assert f"the gate refused v{refused}, trained on this same data window" in out
    assert json.loads(report.read_text())["action"] == "skip"
    assert versions(registry, name) == before

    # 3. New labels make a new window, but the backoff (default 4h) is in force.
    more = generate_drifted("month_to_month_shift", 200, seed=6)
    version = trained_model.result.model_version
    write_log(log_url, more, version, served(trained_model, more), labelled=200)
    assert closed_loop.main(args) == closed_loop.EXIT_OK
    out = capsys.readouterr().out
    assert "1 refused retrain(s) in a row; backing off until" in out
    assert json.loads(report.read_text())["action"] == "backoff"
    assert versions(registry, name) == before

    # 4. Once the backoff has passed, the new window is tried (and refused again).
    time.sleep(1.1)
    code = closed_loop.main([*args, "--backoff", "1s", "--max-backoff", "1s"])
    assert code == closed_loop.EXIT_GATE_REFUSED
    second = json.loads(report.read_text())
    assert second["window"] != window
    assert second["consecutive_refusals"] == 2
    assert len(versions(registry, name)) == len(before) + 1
    assert not list(tmp_path.glob("retrain-*.csv*"))


def test_memory_is_kept_in_the_registry_and_cleared_by_a_promotion(
    trained_model: TrainedModel, registry: str
) -> None:
    from churn.registry import client

    name = trained_model.result.model_name
    memory = closed_loop.RegistryMemory(client(registry), name)
    assert memory.load() == closed_loop.LoopMemory()
    now = datetime(2030, 1, 1, tzinfo=UTC)
    version = trained_model.result.model_version
    memory.remember_refusal("a" * 64, version, now)
    state = memory.remember_refusal("b" * 64, version, now + timedelta(hours=1))
    assert state.refusals == 2
    assert set(state.refused) == {"a" * 64, "b" * 64}
    backoff = closed_loop.Backoff(timedelta(hours=4), timedelta(hours=10))
    assert state.next_attempt_at(backoff) == now + timedelta(hours=9)
    memory.forget()
    assert memory.load() == closed_loop.LoopMemory()


def test_corrupt_memory_fails_closed(
    trained_model: TrainedModel,
    registry: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unreadable memory is an error (exit 2), never "nothing refused so far"."""
    from churn.registry import client

    name = trained_model.result.model_name
    client(registry).set_registered_model_tag(name, "closed_loop.backoff", "{not json")
    customers = generate_drifted("month_to_month_shift", 600, seed=5)
    log_url = log_served(trained_model, tmp_path, customers, labelled=600)
    before = versions(registry, name)

    code = run_cli(trained_model, log_url, "--min-labelled", "300")

    assert code == closed_loop.EXIT_ERROR
    err = capsys.readouterr().err
    assert "closed_loop.backoff" in err
    assert err.count("\n") == 1
    assert versions(registry, name) == before


def test_backoff_doubles_and_is_bounded() -> None:
    backoff = closed_loop.Backoff(timedelta(hours=4), timedelta(days=3))
    delays = [backoff.delay(n) for n in range(7)]
    assert delays[:6] == [timedelta(0)] + [timedelta(hours=h) for h in (4, 8, 16, 32, 64)]
    assert delays[6] == timedelta(days=3)
    assert backoff.delay(10_000) == timedelta(days=3)


def test_window_digest_changes_with_labels_data_and_config() -> None:
    frame = pd.DataFrame({"prediction_id": ["a1", "b2", "c3"], "outcome": [1.0, np.nan, 0.0]})
    base = closed_loop.window_digest("3", frame, "d" * 64, "{}")
    assert base == closed_loop.window_digest("3", frame.iloc[::-1], "d" * 64, "{}")
    assert base != closed_loop.window_digest("3", frame.assign(outcome=1.0), "d" * 64, "{}")
    assert base != closed_loop.window_digest("4", frame, "d" * 64, "{}")
    assert base != closed_loop.window_digest("3", frame, "e" * 64, "{}")
    assert base != closed_loop.window_digest("3", frame, "d" * 64, '{"gate": 1}')
    unlabelled = frame.assign(outcome=[1.0, np.nan, 0.0], prediction_id=["a1", "zz", "c3"])
    assert base == closed_loop.window_digest("3", unlabelled, "d" * 64, "{}")


def test_missing_production_alias_is_an_error(
    trained_model: TrainedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = Path(trained_model.tracking_uri.removeprefix("sqlite:///"))
    uri = f"sqlite:///{shutil.copy(db, tmp_path / 'mlflow.db')}"
    from churn.registry import client

    client(uri).delete_registered_model_alias(trained_model.result.model_name, "production")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    code = run_cli(trained_model, f"sqlite:///{tmp_path / 'log.db'}")

    assert code == closed_loop.EXIT_ERROR
    err = capsys.readouterr().err
    assert "no 'production' alias" in err
    assert "promote_model.py" in err


def test_retraining_set_is_training_data_plus_labelled_rows(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    train_path = tmp_path / "churn_train.csv"
    generate_customers(200, seed=1).to_csv(train_path, index=False)
    config = trained_model.config.model_copy(
        update={"data": trained_model.config.data.model_copy(update={"train_path": train_path})}
    )
    log = generate_drifted("month_to_month_shift", 50, seed=2).rename(columns={"churned": "_"})
    log["outcome"] = [1.0, np.nan] * 25
    rows = closed_loop.labelled_rows(log, FEATURES, "churned")
    assert len(rows) == 25
    assert set(rows["churned"]) == {1}

    path = closed_loop.write_retraining_set(config, rows, datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC))

    assert path == tmp_path / "retrain-20300102T030405Z.csv"
    combined = pd.read_csv(path)
    assert len(combined) == 225
    assert list(combined.columns) == list(pd.read_csv(train_path).columns)
    assert combined["churned"].tail(25).eq(1).all()
    assert not list(tmp_path.glob("*.tmp"))


# --------------------------------------------------------------------------- end to end


@pytest.mark.integration
@pytest.mark.slow
def test_drift_retrains_promotes_and_the_api_follows(tmp_path: Path) -> None:

    from churn.promotion import promote
    from churn.training import train

    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path) as tracking_uri:
        # v1: 3,000 customers, 30 trees. The gate is relaxed: the gate itself is tested in
        # test_mlflow_integration; here it must not decide the fate of the loop.
        generate_customers(3000, seed=11).to_csv(tmp_path / "churn_train.csv", index=False)
        config_path = write_config(
            tmp_path,
            mlflow={"tracking_uri": tracking_uri},
            gate={"min_val_auc": 0.75, "max_auc_drop": 0.05},
            closed_loop={"promotion": "direct"},
        )
        config = load_config(config_path)
        env_backup = os.environ.pop("MLFLOW_TRACKING_URI", None)
        try:
            v1 = train(config, config_path=config_path)
            assert promote(config, version=v1.model_version).changed
        finally:
            if env_backup is not None:
                os.environ["MLFLOW_TRACKING_URI"] = env_backup
        assert v1.model_version == "1"

        log_url = f"sqlite:///{tmp_path / 'prediction_log.db'}"
        env = api_env(config.mlflow.model_name, tracking_uri, log_url)
        with api_server(env, tmp_path / "uvicorn.log") as url:
            assert httpx.get(f"{url}/model", timeout=10).json()["run_id"] == v1.run_id
            # Drifted traffic (half of the longer contracts moved to month-to-month), each
            # prediction followed by its true outcome.
            traffic = generate_drifted("month_to_month_shift", 520, seed=21).dropna()
            with httpx.Client(base_url=url, timeout=30) as client:
                for _, row in traffic.iterrows():
                    answer = client.post("/predict", json=as_request(row))
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["model_version"] == "1"
                    sent = {
                        "prediction_id": answer.json()["prediction_id"],
                        "outcome": bool(row["churned"]),
                    }
                    assert client.post("/feedback", json=sent).status_code == 200

            with Prober(url, as_request(traffic.iloc[0])) as prober:
                loop = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "monitoring.closed_loop",
                        "--config",
                        str(config_path),
                        "--since",
                        "1h",
                        "--database-url",
                        log_url,
                        "--min-labelled",
                        "400",
                        "--json",
                        str(tmp_path / "cycle.json"),
                    ],
                    cwd=ROOT,
                    env={**env, "MLFLOW_TRACKING_URI": tracking_uri},
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                output = loop.stdout + loop.stderr
                assert loop.returncode == closed_loop.EXIT_OK, output
                assert "drift in" in output and "contract_type" in output
                assert "retrained churn-classifier v2" in output
                assert "promoted churn-classifier v2 to @production (was v1)" in output
                assert wait_until(lambda: "2" in prober.versions, timeout=120, step=0.2), (
                    f"the API never answered with v2; served {sorted(set(prober.versions))}"
                )
            assert prober.statuses
            assert set(prober.statuses) == {200}, prober.statuses
            cycle = json.loads((tmp_path / "cycle.json").read_text())
            assert cycle["action"] == "retrain"
            assert cycle["promoted"] is True
            assert cycle["labelled"] == len(traffic)
            retrain_csv = Path(cycle["retrain_data"])
            assert len(pd.read_csv(retrain_csv)) == 3000 + len(traffic)
            with httpx.Client(base_url=url, timeout=30) as client:
                assert client.get("/model").json()["model_version"] == "2"


# --------------------------------------------------------------------------- through a rollout


def loop_config(trained_model: TrainedModel, tmp_path: Path, promotion: str) -> Path:
    """The session's config with its own data copy, a gate a retrain passes, and `promotion`."""
    raw = yaml.safe_load(trained_model.config_path.read_text())
    raw["data"]["train_path"] = str(shutil.copy(trained_model.config.data.train_path, tmp_path))
    raw["export"]["artifacts_dir"] = str(tmp_path / "artifacts")
    raw["export"]["candidates_dir"] = str(tmp_path / "candidates")
    raw["export"]["model_card"] = str(tmp_path / "artifacts" / "MODEL_CARD.md")
    raw["gate"] = {"min_val_auc": 0.5, "max_auc_drop": 0.5}
    raw["rollout"] = {"min_pairs": 400}
    raw["closed_loop"] = {"promotion": promotion}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    return config_path


def retrain_into_rollout(
    trained_model: TrainedModel, tmp_path: Path, promotion: str, capsys: pytest.CaptureFixture[str]
) -> tuple[list[str], str, str]:
    """One cycle on drifted, labelled traffic; returns (cli args, production, new version)."""
    config_path = loop_config(trained_model, tmp_path, promotion)
    customers = generate_drifted("month_to_month_shift", 600, seed=5)
    log_url = log_served(trained_model, tmp_path, customers, labelled=600)
    args = ["--config", str(config_path), "--since", "1h", "--database-url", log_url]
    args += ["--min-labelled", "300", "--json", str(tmp_path / "cycle.json")]
    assert closed_loop.main(args) == closed_loop.EXIT_OK
    result = json.loads((tmp_path / "cycle.json").read_text())
    assert result["action"] == "retrain" and result["promoted"] is False
    return args, result["production_version"], result["candidate_version"]


def test_shadow_retrain_goes_to_challenger_and_is_promoted_on_evidence(
    trained_model: TrainedModel,
    registry: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from churn.registry import client, version_by_alias
    from churn.rollout import read_challenger, read_record
    from tests.rollout_support import write_pairs

    name = trained_model.result.model_name
    args, v1, v2 = retrain_into_rollout(trained_model, tmp_path, "shadow", capsys)
    out = capsys.readouterr().out
    assert f"v{v2} passed the gate and is @challenger in shadow" in out
    mlflow = client(registry)
    assert version_by_alias(mlflow, name, "production") == v1  # nothing served changed
    state = read_challenger(mlflow, name)
    assert state is not None and state.record is not None
    assert (state.version, state.record.stage, state.record.champion) == (v2, "shadow", v1)
    assert state.record.history[0].by == "closed_loop"
    assert json.loads((tmp_path / "cycle.json").read_text())["destination"] == "shadow"
    assert not (tmp_path / "artifacts").exists()

    # Next cycle, too few labelled pairs yet: undecided, nothing moves, no second retrain.
    before = versions(registry, name)
    log_url = args[args.index("--database-url") + 1]
    customers = generate_customers(1200, seed=41)
    p = served(trained_model, customers)
    q = np.clip(np.round(p + np.random.default_rng(1).normal(0, 0.01, len(p)), 4), 0, 1)
    write_pairs(log_url, customers.iloc[:300], v1, v2, p[:300], q[:300], labelled=300)
    assert closed_loop.main(args) == closed_loop.EXIT_OK
    assert "undecided" in capsys.readouterr().out
    assert versions(registry, name) == before
    assert version_by_alias(mlflow, name, "challenger") == v2

    # Enough labelled pairs of an equally good model: promoted through the gated export.
    write_pairs(log_url, customers.iloc[300:], v1, v2, p[300:], q[300:], labelled=900)
    assert closed_loop.main(args) == closed_loop.EXIT_OK
    out = capsys.readouterr().out
    assert f"promoted challenger v{v2} to @production (was v{v1})" in out
    assert version_by_alias(mlflow, name, "production") == v2
    assert version_by_alias(mlflow, name, "challenger") is None
    record = read_record(mlflow, name, v2)
    assert record is not None and record.stage == "promoted"
    assert json.loads((tmp_path / "artifacts" / "release.json").read_text())["version"] == v2


def test_canary_retrain_that_is_worse_live_is_rejected(
    trained_model: TrainedModel,
    registry: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from churn.registry import client, version_by_alias
    from churn.rollout import read_record
    from tests.rollout_support import write_pairs

    name = trained_model.result.model_name
    args, v1, v2 = retrain_into_rollout(trained_model, tmp_path, "canary", capsys)
    assert f"v{v2} passed the gate and is @challenger in canary at 10%" in capsys.readouterr().out
    mlflow = client(registry)
    record = read_record(mlflow, name, v2)
    assert record is not None and (record.stage, record.share) == ("canary", 0.1)

    log_url = args[args.index("--database-url") + 1]
    customers = generate_customers(1000, seed=42)
    p = served(trained_model, customers)
    worse = np.clip(np.round(p + np.random.default_rng(2).normal(0, 0.25, len(p)), 4), 0, 1)
    write_pairs(log_url, customers, v2, v1, worse, p, labelled=1000)  # challenger answered
    assert closed_loop.main(args) == closed_loop.EXIT_GATE_REFUSED
    out = capsys.readouterr().out
    assert f"rejected challenger v{v2}, @production stays v{v1}" in out
    assert "significantly worse" in out
    assert version_by_alias(mlflow, name, "production") == v1
    assert version_by_alias(mlflow, name, "challenger") is None
    record = read_record(mlflow, name, v2)
    assert record is not None and record.stage == "rejected"
    assert json.loads((tmp_path / "cycle.json").read_text())["rollout"].startswith("rejected")


def test_a_challenger_rolled_back_by_a_guardrail_is_cleared_and_reported(
    trained_model: TrainedModel,
    registry: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from churn.registry import client, version_by_alias
    from churn.rollout import ROLLED_BACK, read_challenger, read_record, write_record

    name = trained_model.result.model_name
    args, v1, v2 = retrain_into_rollout(trained_model, tmp_path, "canary", capsys)
    mlflow = client(registry)
    state = read_challenger(mlflow, name)
    assert state is not None and state.record is not None
    # what the API's guardrail writes when the canary breaches a bound
    write_record(mlflow, name, state.record.moved(ROLLED_BACK, "error_ratio 0.08 > 0.02", "api"))
    capsys.readouterr()

    assert closed_loop.main(args) == closed_loop.EXIT_GATE_REFUSED
    out = capsys.readouterr().out
    assert f"challenger v{v2} was rolled back by a guardrail: error_ratio 0.08 > 0.02" in out
    assert version_by_alias(mlflow, name, "challenger") is None
    assert version_by_alias(mlflow, name, "production") == v1
    record = read_record(mlflow, name, v2)
    assert record is not None and record.stage == ROLLED_BACK  # its audit trail is kept
