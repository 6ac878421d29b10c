"""Benchmark: an alias move until every worker serves the new version, webhook vs polling.

``python -m bench.webhook [--quick]`` (also the ``webhook`` section of ``python -m bench.run``).
A real ``mlflow server`` (SQLite backend) holds two versions of the benchmark bundle; the API
runs with 2 workers following ``models:/<name>@production``. Each move sets the alias with
``MlflowClient`` and times until ``GET /model`` shows every worker on the new version:

* webhook: WEBHOOK_ENABLED, the webhook registered with ``app.webhook.register``, polling set
  to 600 s so only the webhook can explain a fast swap;
* polling: no webhook, MODEL_WATCH_INTERVAL as deployed (60 s, docker-compose.yml).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.servers import ROOT, RunningServer, ServerSpec, running

ALIAS = "production"
WORKERS = 2
WEBHOOK_ONLY_INTERVAL = 600.0  # seconds: polling that cannot explain a fast swap
DEPLOYED_INTERVAL = 60.0  # MODEL_WATCH_INTERVAL in docker-compose.yml
MOVE_TIMEOUT = 300.0
SYNC_INTERVAL = 1.0  # MODEL_SYNC_INTERVAL's default: how often followers look for a reload


def publish_version(tracking_uri: str, bundle_dir: Path, name: str, workdir: Path) -> str:
    """Register a new version of `name`: a new run holding `bundle_dir`'s bundle re-versioned
    and re-signed (as training would have written it). Needs the signing key."""
    from churn.bundle import sign_bundle
    from churn.registry import BUNDLE_ARTIFACT_PATH, client

    mlflow = client(tracking_uri)
    experiment = mlflow.get_experiment_by_name("alias-moves")
    experiment_id = (
        experiment.experiment_id if experiment else mlflow.create_experiment("alias-moves")
    )
    if not mlflow.search_registered_models(f"name='{name}'"):
        mlflow.create_registered_model(name)
    run = mlflow.create_run(experiment_id, run_name="alias-move")
    version = str(
        mlflow.create_model_version(
            name, f"runs:/{run.info.run_id}/{BUNDLE_ARTIFACT_PATH}", run_id=run.info.run_id
        ).version
    )
    bundle = workdir / f"bundle-v{version}"
    shutil.copytree(bundle_dir, bundle)
    metadata = json.loads((bundle / "metadata.json").read_text())
    metadata.update(model_name=name, model_version=version, run_id=run.info.run_id)
    (bundle / "metadata.json").write_text(json.dumps(metadata))
    sign_bundle(bundle)
    mlflow.log_artifacts(run.info.run_id, str(bundle), artifact_path=BUNDLE_ARTIFACT_PATH)
    mlflow.set_terminated(run.info.run_id)
    return version


def webhook_server_env() -> dict[str, str]:
    """What `mlflow server` needs to deliver to the API on loopback over http (MLflow 3.17
    sends to public https URLs only by default) and to read its stored secrets back."""
    from cryptography.fernet import Fernet

    return {
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }


def mlflow_spec(backend: str, artifacts: Path) -> ServerSpec:
    argv = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        str(artifacts),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--workers",
        "1",
    ]
    return ServerSpec("mlflow-server", "mlflow server", argv, webhook_server_env(), "/health")


def api_spec(name: str, tracking: str, work: Path, extra: dict[str, str]) -> ServerSpec:
    state = work / f"api-{len(list(work.glob('api-*')))}"
    (state / "prometheus").mkdir(parents=True)
    argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
    return ServerSpec(
        "api",
        "this service, 2 workers",
        [*argv, "--port", "{port}", "--workers", str(WORKERS)],
        {
            "MODEL_URI": f"models:/{name}@{ALIAS}",
            "MLFLOW_TRACKING_URI": tracking,
            "DATABASE_URL": f"sqlite:///{state / 'prediction_log.db'}",
            "PROMETHEUS_MULTIPROC_DIR": str(state / "prometheus"),
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **extra,
        },
        ready_path="/ready",
    )


def served_versions(api: RunningServer) -> list[str | None]:
    """The version each live worker serves, from GET /model (empty while not ready)."""
    try:
        with urllib.request.urlopen(api.url("/model"), timeout=5) as answer:  # noqa: S310
            workers = json.loads(answer.read())["workers"]
    except (OSError, ValueError, KeyError):
        return []
    return [w.get("model_version") for w in workers]


def wait_all_on(api: RunningServer, version: str, timeout: float) -> float:
    """Seconds until every one of the WORKERS serves `version`."""
    started = time.perf_counter()
    while True:
        versions = served_versions(api)
        if len(versions) == WORKERS and set(versions) == {version}:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"workers serve {versions}, not v{version}, after {timeout:.0f} s")
        time.sleep(0.02)


def measure_moves(
    api: RunningServer,
    tracking: str,
    name: str,
    versions: list[str],
    moves: int,
    period: float,
) -> list[float]:
    """Move the alias `moves` times between the versions; seconds until all workers follow.

    Each move waits a random part of `period` first (the interval of the timer that
    matters: the watcher's, or the followers' MODEL_SYNC_INTERVAL), so moves land at random
    points of it rather than just after the previous swap, which would be the worst case.
    """
    from churn.registry import client

    mlflow = client(tracking)
    start = versions.index(str(served_versions(api)[0]))
    chance = random.Random(16)  # timing jitter, not security
    seconds = []
    for i in range(moves):
        target = versions[(start + 1 + i) % len(versions)]
        time.sleep(chance.uniform(0, period))
        began = time.perf_counter()  # the move itself (one registry call) is counted
        mlflow.set_registered_model_alias(name, ALIAS, target)
        wait_all_on(api, target, MOVE_TIMEOUT)
        seconds.append(time.perf_counter() - began)
    return seconds


def _summary(seconds: list[float]) -> dict[str, Any]:
    return {
        "moves": len(seconds),
        "seconds": [round(s, 3) for s in seconds],
        "median_s": statistics.median(seconds),
        "max_s": max(seconds),
    }


@contextmanager
def registry(bundle_dir: Path, work: Path) -> Iterator[tuple[str, str, list[str]]]:
    """A running `mlflow server` holding two versions, @production on the first:
    (tracking URI, model name, versions)."""
    from churn.bundle import load_bundle
    from churn.registry import client

    name = load_bundle(bundle_dir).name
    backend = f"sqlite:///{work / 'mlflow.db'}"
    with running(mlflow_spec(backend, work / "mlartifacts"), work, None) as server:
        tracking = server.url("")
        versions = [publish_version(tracking, bundle_dir, name, work) for _ in range(2)]
        # Straight into the store, not through the server: a move through it before the
        # webhook exists would cache "no webhook for alias events" for 60 s
        # (MLFLOW_WEBHOOK_CACHE_TTL).
        client(backend).set_registered_model_alias(name, ALIAS, versions[0])
        yield tracking, name, versions


def alias_move(
    bundle_dir: Path,
    work: Path,
    webhook_moves: int = 5,
    poll_moves: int = 3,
    poll_interval: float = DEPLOYED_INTERVAL,
) -> dict[str, Any]:
    """Both measurements in one run against one registry."""
    from app.webhook import HOOK_PATH, register
    from churn.registry import client

    work.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    with registry(bundle_dir, work) as (tracking, name, versions):
        hook = {
            "WEBHOOK_ENABLED": "true",
            "WEBHOOK_SECRET": secret,
            "MODEL_WATCH_INTERVAL": str(WEBHOOK_ONLY_INTERVAL),
        }
        with running(api_spec(name, tracking, work, hook), work, None) as api:
            wait_all_on(api, versions[0], 120)
            done = register(client(tracking), "bench-reload", api.url(HOOK_PATH), secret)
            webhook = measure_moves(api, tracking, name, versions, webhook_moves, SYNC_INTERVAL)
            client(tracking).update_webhook(done.webhook_id, status="DISABLED")
        polling_env = {"MODEL_WATCH_INTERVAL": f"{poll_interval:g}"}
        with running(api_spec(name, tracking, work, polling_env), work, None) as api:
            current = client(tracking).get_model_version_by_alias(name, ALIAS).version
            wait_all_on(api, str(current), 120)
            polling = measure_moves(api, tracking, name, versions, poll_moves, poll_interval)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "workers": WORKERS,
        "poll_interval_s": poll_interval,
        "webhook_poll_interval_s": WEBHOOK_ONLY_INTERVAL,
        "webhook": _summary(webhook),
        "polling": _summary(polling),
    }
    result["polling_over_webhook"] = result["polling"]["median_s"] / result["webhook"]["median_s"]
    return result


def quick_settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"webhook_moves": 2, "poll_moves": 1, "poll_interval": 2.0}
    return {"webhook_moves": 5, "poll_moves": 3, "poll_interval": DEPLOYED_INTERVAL}


def main(argv: list[str] | None = None) -> int:
    """Measure, merge into the results JSON and re-render RESULTS.md (the other sections kept)."""
    import tempfile

    from bench.report import write_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s polling, 3 moves")
    parser.add_argument("--bundle", type=Path, default=ROOT / "artifacts", help="bundle dir")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("--md", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="churn-bench-webhook-") as tmp:
        figures = alias_move(args.bundle, Path(tmp), **quick_settings(args.quick))
    print(json.dumps(figures, indent=2))
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results["webhook"] = figures
    write_report(results, args.results.parent, args.md)
    args.results.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
