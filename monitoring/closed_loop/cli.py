"""The closed-loop CLI: ``python -m monitoring.closed_loop`` (one cycle, for a schedule).

python -m monitoring.closed_loop --config config.yaml [--since 24h] [--database-url URL]
    [--min-labelled 200] [--backoff 4h] [--max-backoff 3d] [--pushgateway HOST:PORT]
    [--dry-run] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from churn.config import ConfigError, load_config
from churn.data import DataValidationError
from churn.prediction_log import PredictionLogError
from churn.registry import RegistryError
from churn.stores import DEFAULT_PREDICTION_LOG_URL
from monitoring.closed_loop.cycle import run_cycle
from monitoring.closed_loop.memory import Backoff
from monitoring.closed_loop.results import (
    EXIT_ERROR,
    EXIT_GATE_REFUSED,
    EXIT_INSUFFICIENT,
    EXIT_OK,
    ClosedLoopError,
    CycleResult,
)
from monitoring.drift.results import DriftInputError
from monitoring.drift.sources import parse_duration
from monitoring.quality.live import DEFAULT_MIN_LABELLED

PUSH_JOB = "closed_loop"
DEFAULT_BACKOFF = Backoff()
EXIT_HELP = f"""exit codes:
  {EXIT_OK}  nothing to do, waiting for labels, skipping a refused window, backing off, promoted,
     a retrained model started as @challenger, or a challenger still undecided
  {EXIT_GATE_REFUSED}  drift and enough labels: retrained, and the gate refused the new model;
     or a challenger rejected on the live evidence
  {EXIT_ERROR}  error: config, registry, prediction log or data unusable (one line on stderr)
  {EXIT_INSUFFICIENT}  insufficient data: nothing judged (too few rows in the window)

A refused window is remembered in registry tags (closed_loop.refused.<digest>) and never
retrained again; after a refusal the next retrain on a new window waits --backoff, doubling
per further refusal up to --max-backoff. A promotion (or a challenger started) resets both.

closed_loop.promotion in the config says where a model that passed the gate goes: shadow
(default) or canary start it as @challenger, judged by later cycles on the live evidence
(monitoring.rollout); direct moves @production at once.
"""


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
        "closed_loop_consecutive_refusals": float(result.refusals),
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
        description="Retrain and promote when drift is confirmed and enough labels exist.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=Path("config.yaml"))
    parser.add_argument(
        "--since", type=parse_duration, default=parse_duration("24h"), help="log window (24h)"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", DEFAULT_PREDICTION_LOG_URL),
        help=f"prediction log URL (default: $DATABASE_URL or {DEFAULT_PREDICTION_LOG_URL})",
    )
    parser.add_argument(
        "--min-labelled",
        type=int,
        default=DEFAULT_MIN_LABELLED,
        help=f"labelled rows needed before a retrain (default {DEFAULT_MIN_LABELLED})",
    )
    parser.add_argument(
        "--backoff",
        type=parse_duration,
        default=DEFAULT_BACKOFF.base,
        help="wait after the first refused retrain, doubled per further refusal (4h)",
    )
    parser.add_argument(
        "--max-backoff",
        type=parse_duration,
        default=DEFAULT_BACKOFF.cap,
        help="longest wait between retrain attempts (3d)",
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
    if args.max_backoff < args.backoff:
        print("closed_loop: error: --max-backoff must not be below --backoff", file=sys.stderr)
        return EXIT_ERROR
    try:
        result = run_cycle(
            load_config(args.config),
            args.database_url,
            args.since,
            args.min_labelled,
            args.dry_run,
            Backoff(args.backoff, args.max_backoff),
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
