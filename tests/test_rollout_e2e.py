"""The progressive-delivery story, end to end (issue 13), with every part real: a `mlflow
server`, the API with 2 workers following @production, @challenger and the rollout record,
the prediction log, feedback whose outcomes are drawn from the generator's true
probabilities, and the operator's rollout.py as a subprocess.

1. v1 serves; a better v2 goes to shadow; traffic and feedback; the evaluation says promote;
   `rollout.py promote` and the API serves v2 with zero failed requests through the switch.
2. A worse v3 (trained on corrupted labels) in canary at 10 %: the share is 10 % +- 3 points
   and sticky per key; the evaluation (or a guardrail) rejects it; traffic returns to the
   champion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from churn.config import load_config
from churn.datagen import generate_customers, generate_with_truth
from churn.promotion import promote
from churn.training import train
from monitoring.rollout.results import EXIT_PROMOTE, EXIT_REJECT
from tests.api_support import Prober, wait_until
from tests.conftest import ROOT, write_config
from tests.mlflow_server import mlflow_server
from tests.processes import api_server
from tests.rollout_support import api_env, as_request

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def applied(client: httpx.Client, stage: str, calls: int = 8) -> bool:
    """The workers report `stage` for the challenger (8 calls in a row, landing on both)."""
    return all(client.get("/model").json()["rollout"]["stage"] == stage for _ in range(calls))


def rollout(config_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "rollout.py", "--config", str(config_path), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def send_with_feedback(
    client: httpx.Client,
    customers: pd.DataFrame,
    truth: np.ndarray,
    rng: np.random.Generator,
    keys: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Each customer to /predict (with its routing key), then its outcome drawn from its true
    churn probability to /feedback; returns the answers (with the response headers)."""
    answers = []
    for i, (_, row) in enumerate(customers.iterrows()):
        payload = as_request(row)
        if keys is not None:
            payload["customer_id"] = keys[i]
        response = client.post("/predict", json=payload)
        assert response.status_code == 200, response.text
        answer = response.json()
        answer["role"] = response.headers.get("X-Model-Role")
        answer["header_version"] = response.headers.get("X-Model-Version")
        outcome = bool(rng.random() < truth[i])
        sent = client.post(
            "/feedback", json={"prediction_id": answer["prediction_id"], "outcome": outcome}
        )
        assert sent.status_code == 200, sent.text
        answers.append(answer)
    return answers


def test_shadow_promote_then_a_worse_canary_is_rejected(tmp_path: Path) -> None:
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path) as tracking_uri:
        train_path = tmp_path / "churn_train.csv"
        config_path = write_config(
            tmp_path,
            mlflow={"tracking_uri": tracking_uri},
            gate={"min_val_auc": 0.6, "max_auc_drop": 0.3},
            rollout={"min_pairs": 100},
        )
        saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
        try:
            # v1: a small model on 600 customers; v2: the same recipe on 6,000 (better)
            generate_customers(600, seed=11).to_csv(train_path, index=False)
            config = load_config(config_path)
            v1 = train(config, config_path=config_path)
            assert promote(config, version=v1.model_version).changed
            generate_customers(6000, seed=12).to_csv(train_path, index=False)
            v2 = train(config, config_path=config_path)
            # v3: 6,000 customers whose month-to-month labels were inverted by a broken join
            corrupted = generate_customers(6000, seed=13)
            broken = corrupted["contract_type"] == "Month-to-month"
            corrupted.loc[broken, "churned"] = 1 - corrupted.loc[broken, "churned"]
            corrupted.to_csv(train_path, index=False)
            v3 = train(config, config_path=config_path)
        finally:
            if saved is not None:
                os.environ["MLFLOW_TRACKING_URI"] = saved
        assert (v1.model_version, v2.model_version, v3.model_version) == ("1", "2", "3")

        log_url = f"sqlite:///{tmp_path / 'prediction_log.db'}"
        env = api_env(config.mlflow.model_name, tracking_uri, log_url, ROLLOUT_ACTOR="e2e")
        rng = np.random.default_rng(21)
        with api_server(env, tmp_path / "uvicorn.log", workers=2) as url:
            client = httpx.Client(base_url=url, timeout=30)
            # ---- v2 in shadow
            started = rollout(config_path, env, "start", "--version", "2")
            assert started.returncode == 0, started.stdout + started.stderr
            assert wait_until(lambda: applied(client, "shadow"), timeout=60, step=0.2)
            customers, truth = generate_with_truth(900, seed=31)
            answers = send_with_feedback(client, customers, truth, rng)
            assert {a["model_version"] for a in answers} == {"1"}  # the champion answers
            assert {a["role"] for a in answers} == {"champion"}
            report = tmp_path / "shadow.json"
            verdict = rollout(
                config_path, env, "evaluate", "--database-url", log_url, "--json", str(report)
            )
            assert verdict.returncode == EXIT_PROMOTE, verdict.stdout + verdict.stderr
            evidence = json.loads(report.read_text())
            # every answer was shadowed and paired (a worker takes the challenger within a
            # second of the other: allow the first few requests)
            assert evidence["labelled_pairs"] >= 0.97 * len(customers), evidence["labelled_pairs"]
            assert evidence["auc"]["difference"] > 0  # v2 is the better model
            # ---- promote with traffic flowing: zero failed requests
            with Prober(url, as_request(customers.iloc[0]), pause=0.05) as prober:
                promoted = rollout(config_path, env, "promote", "--database-url", log_url)
                assert promoted.returncode == 0, promoted.stdout + promoted.stderr
                assert wait_until(lambda: prober.versions[-1:] == ["2"], timeout=60, step=0.2)
            assert set(prober.statuses) == {200}, prober.statuses
            status = json.loads(rollout(config_path, env, "status", "--json").stdout)
            assert status["champion"] == "2"
            assert status["challenger"] is None

            # ---- v3 (worse) in canary at 10 %
            assert rollout(config_path, env, "start", "--version", "3").returncode == 0
            canary = rollout(config_path, env, "canary", "--share", "0.1")
            assert canary.returncode == 0, canary.stderr
            customers, truth = generate_with_truth(1500, seed=41)
            keys = [f"c-{i}" for i in range(len(customers))]
            assert wait_until(lambda: applied(client, "canary"), timeout=60, step=0.2)
            answers = send_with_feedback(client, customers, truth, rng, keys)
            on_v3 = [a["model_version"] == "3" for a in answers]
            share = float(np.mean(on_v3))
            assert 0.07 <= share <= 0.13, share
            assert all((a["role"] == "challenger") == (a["model_version"] == "3") for a in answers)
            # sticky: the same keys meet the same model again
            again = send_with_feedback(client, customers.iloc[:200], truth[:200], rng, keys[:200])
            assert [a["model_version"] for a in again] == [
                a["model_version"] for a in answers[:200]
            ]
            report = tmp_path / "canary.json"
            verdict = rollout(
                config_path, env, "evaluate", "--database-url", log_url, "--json", str(report)
            )
            assert verdict.returncode == EXIT_REJECT, verdict.stdout + verdict.stderr
            evidence = json.loads(report.read_text())
            on_challenger = sum(a["model_version"] == "3" for a in [*answers, *again])
            assert evidence["canary_pairs"] >= 0.95 * on_challenger
            aborted = rollout(config_path, env, "abort", "--reason", "worse on live traffic")
            assert aborted.returncode == 0, aborted.stderr
            record = json.loads(rollout(config_path, env, "status", "--json").stdout)
            assert record["challenger"] is None
            # traffic returns to the champion in every worker
            assert wait_until(
                lambda: all(
                    client.post(
                        "/predict", json={**as_request(customers.iloc[0]), "customer_id": k}
                    ).json()["model_version"]
                    == "2"
                    for k in keys[:100]
                ),
                timeout=60,
                step=0.5,
            )
            client.close()
