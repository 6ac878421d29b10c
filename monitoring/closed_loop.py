"""The closed loop: drift confirmed + enough labelled traffic -> retrain, gate, promote.

    python -m monitoring.closed_loop --config config.yaml [--since 24h] [--database-url URL]
        [--min-labelled 500] [--pushgateway HOST:PORT] [--dry-run] [--json PATH]

One cycle, meant for a schedule (the compose drift-monitor service, the drift-check workflow):

1. reference = the training profile in the metadata of the version behind ``@production``
   (read from the registry, so it always matches what the API serves);
2. current = the prediction-log window, restricted to rows that production version served:
   traffic judged against its own model's profile, and rows a retrain already used (served by
   an older version) never trigger a second retrain;
3. drift is judged by :mod:`monitoring.drift_detector` (same tests, corrections, thresholds);
4. drift in any feature or in the predictions, AND at least ``--min-labelled`` of those rows
   with feedback -> the training data plus the labelled rows are written to a new CSV beside
   the training data, a model is trained on it and promoted if it passes the gate.

The API follows ``@production`` (MODEL_WATCH_INTERVAL), so a promotion needs no restart.
Exit codes: 0 nothing to do / waiting for labels / promoted, 1 drift but the gate refused the
new model, 2 error (one line on stderr naming what to fix).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from churn.config import Config, ConfigError, load_config
from churn.data import DataValidationError, read_table
from churn.prediction_log import PredictionLogError
from churn.registry import RegistryError
from monitoring.drift_detector import (
    DriftInputError,
    DriftRun,
    ReferenceSource,
    load_current_from_log,
    load_reference,
    parse_duration,
    run_drift_check,
)

EXIT_OK, EXIT_GATE_REFUSED, EXIT_ERROR = 0, 1, 2
DEFAULT_MIN_LABELLED = 500
PUSH_JOB = "closed_loop"

Action = Literal["none", "wait", "retrain"]


class ClosedLoopError(RuntimeError):
    """The cycle cannot run; the message says what to fix."""


@dataclass(frozen=True)
class Decision:
    """What one cycle should do, and why (printed as one line)."""

    action: Action
    reason: str
    drifted: list[str] = field(default_factory=list)
    labelled: int = 0


@dataclass
class CycleResult:
    """Everything a cycle did, for the JSON report and the Pushgateway."""

    production_version: str
    decision: Decision
    drift_summary: str
    current_rows: int
    retrain_data: str | None = None
    candidate_version: str | None = None
    candidate_auc: float | None = None
    promoted: bool = False
    gate: str | None = None
    exit_code: int = EXIT_OK
    finished_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_dict(self) -> dict[str, Any]:
        return {
            "production_version": self.production_version,
            "action": self.decision.action,
            "reason": self.decision.reason,
            "drifted": self.decision.drifted,
            "labelled": self.decision.labelled,
            "drift_summary": self.drift_summary,
            "current_rows": self.current_rows,
            "retrain_data": self.retrain_data,
            "candidate_version": self.candidate_version,
            "candidate_auc": self.candidate_auc,
            "promoted": self.promoted,
            "gate": self.gate,
            "exit_code": self.exit_code,
            "finished_at": self.finished_at.isoformat(timespec="seconds"),
        }


# --------------------------------------------------------------------------- pure decision


def drift_reasons(run: DriftRun) -> list[str]:
    """Names of what drifted: features, plus 'prediction' when the scores moved."""
    reasons = list(run.drifted_features)
    if run.prediction is not None and run.prediction.drifted:
        reasons.append("prediction")
    return reasons


def decide(run: DriftRun, labelled: int, min_labelled: int) -> Decision:
    """Retrain only on confirmed drift with enough labels; otherwise say why not."""
    drifted = drift_reasons(run)
    if not drifted:
        return Decision("none", f"{run.summary_line()}; nothing to do", [], labelled)
    what = ", ".join(drifted)
    if labelled < min_labelled:
        return Decision(
            "wait",
            f"drift in {what}, but only {labelled:,} labelled rows (< {min_labelled:,}); "
            "waiting for more feedback before retraining",
            drifted,
            labelled,
        )
    return Decision(
        "retrain", f"drift in {what} and {labelled:,} labelled rows: retraining", drifted, labelled
    )


def labelled_rows(current: pd.DataFrame, features: Sequence[str], target: str) -> pd.DataFrame:
    """Log rows with feedback as training rows: the features plus the outcome as the target."""
    if current.empty or "outcome" not in current:
        return pd.DataFrame(columns=[*features, target])
    rows = current[current["outcome"].notna()]
    missing = [f for f in features if f not in rows.columns]
    if missing:
        raise ClosedLoopError(f"prediction log rows lack feature column(s): {', '.join(missing)}")
    out = rows[list(features)].copy()
    out[target] = rows["outcome"].astype(int).to_numpy()
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------- I/O steps


def production_reference(config: Config, alias: str = "production") -> tuple[str, ReferenceSource]:
    """The version behind `alias` and its training profile (metadata.json from its run)."""
    from churn.promotion import bundle_metadata
    from churn.registry import client, version_by_alias

    name = config.mlflow.model_name
    version = version_by_alias(client(config.tracking_uri), name, alias)
    if version is None:
        raise ClosedLoopError(
            f"model '{name}' has no '{alias}' alias at {config.tracking_uri}; "
            "train and promote a first version (train.py, promote_model.py)"
        )
    metadata = bundle_metadata(config, version)
    with tempfile.TemporaryDirectory(prefix="closed-loop-") as tmp:
        path = Path(tmp) / "metadata.json"
        path.write_text(json.dumps(metadata), encoding="utf-8")
        return version, load_reference(path)


def served_window(database_url: str, since: timedelta, version: str) -> tuple[pd.DataFrame, str]:
    """Prediction-log rows of the last `since` that `version` served."""
    frame, label = load_current_from_log(database_url, since)
    if not frame.empty:
        frame = frame[frame["model_version"].astype(str) == version].reset_index(drop=True)
    return frame, f"{label}, served by v{version}"


def write_retraining_set(config: Config, labelled: pd.DataFrame, now: datetime) -> Path:
    """Training data + labelled log rows, written atomically to data/retrain-<UTC stamp>.csv."""
    original_path = config.data.train_path
    original = read_table(original_path)
    extra = labelled.reindex(columns=original.columns)
    combined = pd.concat([original, extra], ignore_index=True)
    target = original_path.parent / f"retrain-{now.strftime('%Y%m%dT%H%M%SZ')}.csv"
    tmp = target.with_suffix(".csv.tmp")
    try:
        combined.to_csv(tmp, index=False)
        tmp.replace(target)  # a reader never sees half a file
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ClosedLoopError(f"{target}: cannot write the retraining set ({exc})") from exc
    return target


def retrain_config(config: Config, train_path: Path, artifacts_dir: Path) -> Config:
    """The same config, trained on `train_path`, its bundle staged in `artifacts_dir`."""
    return config.model_copy(
        update={
            "data": config.data.model_copy(update={"train_path": train_path}),
            "export": config.export.model_copy(update={"artifacts_dir": artifacts_dir}),
        }
    )


def publish_bundle(staged: Path, artifacts_dir: Path) -> None:
    """Copy a promoted bundle over the local one, metadata.json last (it names the files)."""
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in staged.iterdir() if p.is_file())
    for path in [p for p in files if p.name != "metadata.json"] + [staged / "metadata.json"]:
        tmp = artifacts_dir / f".{path.name}.tmp"
        shutil.copyfile(path, tmp)
        tmp.replace(artifacts_dir / path.name)


def retrain_and_promote(config: Config, data_path: Path, result: CycleResult) -> None:
    """Train on `data_path`, gate and promote; fills `result` and prints one line per step."""
    from churn.promotion import GateFailed, promote
    from churn.training import train

    with tempfile.TemporaryDirectory(prefix="closed-loop-bundle-") as staging:
        candidate_config = retrain_config(config, data_path, Path(staging))
        trained = train(candidate_config)
        result.candidate_version = trained.model_version
        result.candidate_auc = trained.metrics["val_auc"]
        say(
            f"retrained {trained.model_name} v{trained.model_version} on {data_path} "
            f"(val AUC {trained.metrics['val_auc']:.4f})"
        )
        try:
            promotion = promote(candidate_config, version=trained.model_version)
        except GateFailed as exc:
            result.gate = f"{exc.decision.summary()}: {exc}"
            result.exit_code = EXIT_GATE_REFUSED
            say(f"gate failed, production stays v{result.production_version}: {result.gate}")
            return
        assert promotion.decision is not None
        result.gate = promotion.decision.summary()
        result.promoted = promotion.changed
        publish_bundle(Path(staging), config.export.artifacts_dir)
    was = f" (was v{promotion.previous})" if promotion.previous else ""
    say(f"promoted {trained.model_name} v{promotion.version} to @production{was}: {result.gate}")


def run_cycle(
    config: Config,
    database_url: str,
    since: timedelta,
    min_labelled: int,
    dry_run: bool = False,
) -> CycleResult:
    """One closed-loop cycle (see the module docstring)."""
    version, reference = production_reference(config)
    current, label = served_window(database_url, since, version)
    run = run_drift_check(reference, current, label)
    features = [*reference.numeric, *reference.categorical]
    labelled = labelled_rows(current, features, config.data.target_column)
    decision = decide(run, len(labelled), min_labelled)
    result = CycleResult(version, decision, run.summary_line(), len(current))
    say(f"v{version}: {decision.reason}")
    if decision.action != "retrain":
        return result
    if dry_run:
        say(f"dry run: would retrain on {config.data.train_path} + {len(labelled):,} rows")
        return result
    now = datetime.now(UTC)
    data_path = write_retraining_set(config, labelled, now)
    result.retrain_data = str(data_path)
    say(f"retraining set {data_path}: {config.data.train_path} + {len(labelled):,} labelled rows")
    retrain_and_promote(config, data_path, result)
    result.finished_at = datetime.now(UTC)
    return result


# --------------------------------------------------------------------------- edges


def say(message: str) -> None:
    print(f"closed_loop: {message}", flush=True)


def push_metrics(result: CycleResult, gateway: str) -> None:
    """A few gauges for the run (job 'closed_loop', so the drift job's group is untouched)."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    values = {
        "closed_loop_last_run_timestamp_seconds": result.finished_at.timestamp(),
        "closed_loop_drift_detected": float(bool(result.decision.drifted)),
        "closed_loop_labelled_samples": float(result.decision.labelled),
        "closed_loop_retrained": float(result.candidate_version is not None),
        "closed_loop_promoted": float(result.promoted),
        "closed_loop_exit_code": float(result.exit_code),
    }
    for name, value in values.items():
        Gauge(name, name.replace("_", " "), registry=registry).set(value)
    try:
        push_to_gateway(gateway, job=PUSH_JOB, registry=registry, timeout=10)
    except OSError as exc:
        raise ClosedLoopError(f"pushgateway {gateway}: push failed ({exc})") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m monitoring.closed_loop",
        description="Retrain and promote when drift is confirmed and enough labels exist; "
        "exit 0 nothing to do or promoted, 1 gate refused the new model, 2 error.",
    )
    parser.add_argument("--config", type=Path, default=Path("config.yaml"))
    parser.add_argument(
        "--since", type=parse_duration, default=parse_duration("24h"), help="log window (24h)"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "sqlite:///prediction_log.db"),
        help="prediction log URL (default: $DATABASE_URL or sqlite:///prediction_log.db)",
    )
    parser.add_argument(
        "--min-labelled",
        type=int,
        default=DEFAULT_MIN_LABELLED,
        help="labelled rows needed before a retrain",
    )
    parser.add_argument("--pushgateway", help="HOST:PORT of a Prometheus Pushgateway")
    parser.add_argument("--dry-run", action="store_true", help="decide only; train nothing")
    parser.add_argument("--json", type=Path, help="write the cycle's report here")
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException

    return (
        ClosedLoopError,
        ConfigError,
        DataValidationError,
        DriftInputError,
        PredictionLogError,
        RegistryError,
        MlflowException,
        OSError,  # registry or store unreachable (requests' ConnectionError is an OSError)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; every expected failure is one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    if args.min_labelled < 1:
        print("closed_loop: error: --min-labelled must be at least 1", file=sys.stderr)
        return EXIT_ERROR
    try:
        result = run_cycle(
            load_config(args.config), args.database_url, args.since, args.min_labelled, args.dry_run
        )
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
        if args.pushgateway:
            push_metrics(result, args.pushgateway)
    except _expected_errors() as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"closed_loop: error: {first}", file=sys.stderr)
        return EXIT_ERROR
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
