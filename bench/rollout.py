"""Progressive delivery's cost on the request path, measured on one server in one run.

Two versions are trained into a private MLflow store; one service (one uvicorn worker, as
deployed) serves ``models:/<name>@production`` and follows ``@challenger`` and its rollout
record. The same loads run in three phases, switched by the registry alone (no restart):

- ``off``: no ``@challenger`` (the baseline);
- ``shadow``: the challenger scores every served row off the answer's path;
- ``canary``: 10 % of customers answered by the challenger, the champion scoring those rows
  too, paired (a canary's default);
- ``routing``: the same canary unpaired (``rollout.py canary --unpaired``): routing alone.

/predict carries an ``X-Routing-Key`` cycling over 1,000 customers (a wrk script), so routing
sees many customers as in production; /predict/batch sends 1,000 customers, each with its own
``customer_id``. Every phase runs ``rounds`` times in turn (off, shadow, canary, off, ...) and
the best of its rounds is kept, so a neighbour's burst on a shared machine does not decide a
ratio. The cost is ``1 - throughput / off's throughput``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench import instructions
from bench import load as loadgen
from bench.http import HttpConfig, _measure, say
from bench.servers import ROOT, RunningServer, ServerSpec, running, uvicorn_argv
from churn.datagen import generate_customers

PHASES = ("off", "shadow", "canary", "routing")
CANARY_SHARE = 0.10
ROUTING_KEYS = 1000
BATCH_ROWS = 1000


def _train(config_path: Path, rows: int, work: Path, tracking: str, seed: int) -> str:
    """Train one version into `tracking` with train.py (as `make train`); its version."""
    work.mkdir(parents=True, exist_ok=True)
    data = work / "churn_train.csv"
    generate_customers(rows, seed=seed).to_csv(data, index=False)
    raw = yaml.safe_load(config_path.read_text())
    raw["mlflow"]["tracking_uri"] = tracking
    raw["data"]["train_path"] = str(data)
    raw["export"]["artifacts_dir"] = str(work / "artifacts")
    raw["export"]["candidates_dir"] = str(work / "candidates")
    raw["export"]["model_card"] = str(work / "MODEL_CARD.md")
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config", str(config)],
        cwd=work,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"train.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    metadata = json.loads(next((work / "candidates").rglob("metadata.json")).read_text())
    return str(metadata["model_version"])


def _metrics(server: RunningServer) -> str:
    with urllib.request.urlopen(server.url("/metrics"), timeout=10) as response:  # noqa: S310
        text: str = response.read().decode()
    return text


def _sum(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def apply_phase(
    phase: str,
    registry: Any,
    name: str,
    champion: str,
    challenger: str,
    guardrails: dict[str, Any] | None = None,
) -> None:
    """Put the registry in `phase`: no challenger, or a new record in shadow or canary (with
    `guardrails` instead of the defaults)."""
    from churn.rollout import CANARY, CHALLENGER, RolloutRecord, write_record

    if phase == "off":
        from mlflow.exceptions import MlflowException

        from churn.registry import is_absent

        try:
            registry.delete_registered_model_alias(name, CHALLENGER)
        except MlflowException as exc:
            if not is_absent(exc):
                raise
        return
    record = RolloutRecord.start(
        challenger, champion, "benchmark", by="bench", guardrails=guardrails
    )
    if phase in ("canary", "routing"):
        record = record.moved(
            CANARY, "benchmark", by="bench", share=CANARY_SHARE, paired=phase == "canary"
        )
    write_record(registry, name, record)
    registry.set_registered_model_alias(name, CHALLENGER, challenger)


def _applied(server: RunningServer, phase: str) -> bool:
    text = _metrics(server)
    if phase == "off":
        return _sum(text, "rollout_stage") == 0
    if phase in ("canary", "routing"):  # the same stage: the record's pairing tells them apart
        with urllib.request.urlopen(server.url("/model"), timeout=10) as response:  # noqa: S310
            applied = json.loads(response.read())["rollout"]
        return applied["stage"] == "canary" and applied["paired"] == (phase == "canary")
    return _sum(text, "rollout_stage", stage=phase) == 1


def measure(
    config_path: Path,
    rows: int,
    work: Path,
    cfg: HttpConfig,
    customers: list[dict[str, Any]],
    rounds: int,
    counted: dict[str, int],
) -> dict[str, Any]:
    """Throughput per phase and its cost against ``off``, in one run on one server; then the
    same phases' instructions per request (bench.instructions; `counted`: requests per
    caller on /predict and /predict/batch)."""
    from churn.registry import client

    store = work / "rollout"
    tracking = f"sqlite:///{store / 'mlflow.db'}"
    say(f"rollout: training two versions on {rows:,} rows each")
    champion = _train(config_path, rows, store / "v1", tracking, seed=101)
    challenger = _train(config_path, rows, store / "v2", tracking, seed=202)
    name = yaml.safe_load(config_path.read_text())["mlflow"]["model_name"]
    registry = client(tracking)
    registry.set_registered_model_alias(name, "production", champion)
    single = store / "body_single.json"
    single.write_text(json.dumps(customers[0]))
    batch = store / "body_batch.json"
    batch.write_text(
        json.dumps(
            {
                "customers": [
                    {**customers[i % len(customers)], "customer_id": f"customer-{i}"}
                    for i in range(BATCH_ROWS)
                ]
            }
        )
    )
    metrics_dir = store / "prometheus"
    metrics_dir.mkdir()
    spec = ServerSpec(
        name="rollout",
        label="this service, following @challenger",
        argv=uvicorn_argv("app.main:app", "--proxy-headers"),
        env={
            "MODEL_URI": f"models:/{name}@production",
            "MLFLOW_TRACKING_URI": tracking,
            "MODEL_WATCH_INTERVAL": "0.5",
            "DATABASE_URL": f"sqlite:///{store / 'prediction_log.db'}",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "LOG_LEVEL": "INFO",
            "ENVIRONMENT": "production",
            "PYTHONUNBUFFERED": "1",
        },
        ready_path="/ready",
        batch_path="/predict/batch",
        body_format="service",
    )
    runs: dict[str, list[dict[str, Any]]] = {phase: [] for phase in PHASES}
    shadow_counts: dict[str, float] = {}
    with running(spec, store, cfg.server_cpu) as server:
        for round_ in range(rounds):
            for phase in PHASES:
                apply_phase(phase, registry, name, champion, challenger)
                deadline = time.monotonic() + 60
                while not _applied(server, phase):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"rollout: the server did not apply {phase} in 60 s")
                    time.sleep(0.2)
                say(f"rollout: round {round_ + 1}/{rounds}, {phase}")
                predict = loadgen.Load(
                    server.url("/predict"),
                    cfg.connections,
                    cfg.duration_s,
                    single,
                    routing_keys=ROUTING_KEYS,
                )
                if cfg.warmup_s > 0:
                    warm = loadgen.Load(predict.url, cfg.connections, cfg.warmup_s, single, 30.0)
                    loadgen.run_load(warm, cfg.load_cpu)
                before = _metrics(server)
                single_result = _measure(server, predict, cfg)
                batch_load = loadgen.Load(
                    server.url("/predict/batch"), cfg.batch_connections, cfg.duration_s, batch
                )
                batch_result = _measure(server, batch_load, cfg)
                after = _metrics(server)
                batch_result["rows_per_s"] = batch_result["rps"] * BATCH_ROWS
                runs[phase].append(
                    {
                        "predict": single_result,
                        "batch": batch_result,
                        "challenger_answers": _sum(
                            after, "predictions_total", outcome="success", role="challenger"
                        )
                        - _sum(before, "predictions_total", outcome="success", role="challenger"),
                        "answers": _sum(after, "predictions_total", outcome="success")
                        - _sum(before, "predictions_total", outcome="success"),
                        **{
                            f"shadow_{outcome}": _sum(
                                after, "shadow_predictions_total", outcome=outcome
                            )
                            - _sum(before, "shadow_predictions_total", outcome=outcome)
                            for outcome in ("success", "dropped")
                        },
                    }
                )
        text = _metrics(server)
        for outcome in ("success", "error", "dropped"):
            shadow_counts[outcome] = _sum(text, "shadow_predictions_total", outcome=outcome)
    result = summarise(runs, shadow_counts, rows, rounds)
    say("rollout: the same phases counted under Callgrind (instructions per request)")
    apart = store / "counted"
    (apart / "prometheus").mkdir(parents=True)
    result["instructions"] = instructions.measure(
        store,
        {
            **spec.env,
            "DATABASE_URL": f"sqlite:///{apart / 'prediction_log.db'}",
            "PROMETHEUS_MULTIPROC_DIR": str(apart / "prometheus"),
        },
        {"name": name, "champion": champion, "challenger": challenger},
        {"predict": single, "batch": batch},
        PHASES,
        counted,
    )
    return result


def summarise(
    runs: dict[str, list[dict[str, Any]]], shadow: dict[str, float], rows: int, rounds: int
) -> dict[str, Any]:
    """Best round per phase, and each phase's cost against ``off``."""
    best: dict[str, Any] = {}
    for phase, results in runs.items():
        top_single = max(results, key=lambda r: r["predict"]["rps"])
        top_batch = max(results, key=lambda r: r["batch"]["rps"])
        answers = sum(r["answers"] for r in results)
        best[phase] = {
            "predict_rps": top_single["predict"]["rps"],
            "predict_p99_ms": top_single["predict"]["latency_ms"]["p99"],
            "predict_errors": sum(r["predict"]["errors"] for r in results),
            "batch_rows_per_s": top_batch["batch"]["rows_per_s"],
            "batch_p99_ms": top_batch["batch"]["latency_ms"]["p99"],
            "batch_errors": sum(r["batch"]["errors"] for r in results),
            "challenger_share": sum(r["challenger_answers"] for r in results) / answers
            if answers
            else None,
            "shadow_scored": sum(r["shadow_success"] for r in results),
            "shadow_dropped": sum(r["shadow_dropped"] for r in results),
            "rounds": results,
        }
    off = best["off"]
    for phase in PHASES[1:]:
        best[phase]["predict_cost"] = 1 - best[phase]["predict_rps"] / off["predict_rps"]
        best[phase]["batch_cost"] = 1 - best[phase]["batch_rows_per_s"] / off["batch_rows_per_s"]
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_end": os.getloadavg()[0],
        "train_rows": rows,
        "rounds": rounds,
        "canary_share": CANARY_SHARE,
        "phases": best,
        "shadow_predictions": shadow,
    }
