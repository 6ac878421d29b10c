"""The operator's rollout CLI (``rollout.py``; make rollout-start, -canary, -evaluate,
-promote, -abort, -status).

    rollout.py start    [--version N] [--reason TEXT] [--replace]
    rollout.py canary   [--share 0.10] [--unpaired | --paired] [--reason TEXT]
    rollout.py evaluate [--database-url URL] [--since 24h] [--prometheus URL]
                        [--json PATH] [--html PATH] [--pushgateway HOST:PORT] [--no-record]
    rollout.py promote  [--database-url URL] [--prometheus URL] [--override REASON]
    rollout.py abort    --reason TEXT
    rollout.py status   [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from churn.bundle import BundleError
from churn.config import Config, ConfigError, load_config
from churn.prediction_log import PredictionLogError
from churn.promotion import GateFailed, PromotionError
from churn.redact import redact
from churn.registry import RegistryError, bounded_http_retries
from churn.rollout import RolloutError, RolloutRecord
from churn.stores import DEFAULT_PREDICTION_LOG_URL
from monitoring.drift.sources import parse_duration
from monitoring.rollout.results import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_PROMOTE,
    EXIT_REJECT,
    Evaluation,
    EvaluationError,
)

PROG = "rollout.py"
EXIT_OK = 0
EXIT_HELP = (
    "exit codes of evaluate (promote: 0 promoted, else the evaluation's code and nothing moved):\n"
    + "".join(f"  {code}  {text}\n" for code, text in EXIT_CODES.items())
    + "start, canary, abort, status: 0 done, 1 the gate refused the version (start), 2 error "
    "(including another promotion holding the lock: nothing changed, try again)\n"
)


def say(message: str) -> None:
    print(f"rollout: {message}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Shadow, canary and promotion of a challenger on live evidence.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=Path("config.yaml"))
    sub = parser.add_subparsers(dest="command", required=True)

    start = sub.add_parser("start", help="a gated, verified version to @challenger in shadow")
    start.add_argument("--version", help="registered version (default: the newest)")
    start.add_argument("--reason", default="started by the operator")
    start.add_argument(
        "--replace", action="store_true", help="end an active rollout (as rejected) to start this"
    )

    canary = sub.add_parser("canary", help="answer a share of traffic with the challenger")
    canary.add_argument("--share", type=float, help="0 < share <= 1 (default rollout.canary_share)")
    canary.add_argument("--reason", default="canary by the operator")
    pairing = canary.add_mutually_exclusive_group()
    pairing.add_argument(
        "--unpaired",
        dest="paired",
        action="store_false",
        default=None,
        help="routing alone: the champion does not also score the challenger's rows (about "
        "a tenth less model work at 10 %%; the paired evidence then comes from shadow)",
    )
    pairing.add_argument(
        "--paired",
        dest="paired",
        action="store_true",
        help="the champion also scores the challenger's rows, paired (a new canary's default)",
    )

    def evidence_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--database-url",
            default=os.environ.get("DATABASE_URL", DEFAULT_PREDICTION_LOG_URL),
            help=f"prediction log (default: $DATABASE_URL or {DEFAULT_PREDICTION_LOG_URL})",
        )
        p.add_argument(
            "--since", type=parse_duration, help="narrow the window (default: the whole rollout)"
        )
        p.add_argument(
            "--prometheus",
            default=os.environ.get("PROMETHEUS_URL") or None,
            help="Prometheus base URL for p95 latency and error ratio per role "
            "(default: $PROMETHEUS_URL; unreachable -> exit 2)",
        )

    evaluate = sub.add_parser("evaluate", help="the evidence so far and the decision")
    evidence_options(evaluate)
    evaluate.add_argument("--json", type=Path, help="write the JSON report here")
    evaluate.add_argument("--html", type=Path, help="write the HTML report here")
    evaluate.add_argument("--pushgateway", help="HOST:PORT of a Prometheus Pushgateway")
    evaluate.add_argument(
        "--no-record", action="store_true", help="do not keep the summary in the rollout record"
    )

    promote = sub.add_parser("promote", help="promote the challenger (evidence must say promote)")
    evidence_options(promote)
    promote.add_argument(
        "--override",
        metavar="REASON",
        help="promote whatever the evidence says; the reason goes into the record",
    )
    promote.add_argument("--model-card", type=Path, help="default: export.model_card")

    abort = sub.add_parser("abort", help="end the rollout as rejected, remove @challenger")
    abort.add_argument("--reason", required=True)

    status = sub.add_parser("status", help="the rollout record and the evidence so far")
    status.add_argument("--json", action="store_true", help="the record as JSON")
    return parser


def _record_lines(record: RolloutRecord) -> list[str]:
    share = f" at {record.share:.0%}" if record.stage == "canary" else ""
    lines = [
        f"challenger v{record.version}: {record.stage}{share} (champion when started: "
        f"v{record.champion or 'none'}), started {record.started}, updated {record.updated}",
        f"  reason: {record.reason}",
    ]
    if record.guardrails:
        bounds = ", ".join(f"{k}={v:g}" for k, v in sorted(record.guardrails.items()))
        lines.append(f"  guardrails: {bounds}")
    for step in record.history:
        share = f" {step.share:.0%}" if step.stage == "canary" else ""
        lines.append(f"  {step.at}  {step.stage}{share}  by {step.by}: {step.reason}")
    if record.evidence:
        lines.append(f"  evidence so far: {json.dumps(record.evidence, sort_keys=True)}")
    return lines


def _evaluate(config: Config, args: argparse.Namespace) -> Evaluation:
    from monitoring.rollout.evaluate import evaluate

    return evaluate(config, args.database_url, args.since, args.prometheus)


def cmd_start(config: Config, args: argparse.Namespace) -> int:
    from churn.challenger import start_challenger

    result = start_challenger(config, args.version, args.reason, replace=args.replace)
    decision = result.promotion.decision
    if decision is not None:
        say(f"gate passed: {decision.summary()}")
    if result.replaced is not None:
        say(f"v{result.replaced.version} rollout ended as rejected: {result.replaced.reason}")
    record = result.record
    say(
        f"{config.mlflow.model_name} v{record.version} is @challenger in shadow beside "
        f"@production v{record.champion or 'none'}; the API shadows it within "
        "MODEL_WATCH_INTERVAL"
    )
    return EXIT_OK


def cmd_canary(config: Config, args: argparse.Namespace) -> int:
    from churn.challenger import set_canary

    share = args.share if args.share is not None else config.rollout.canary_share
    record = set_canary(config, share, args.reason, paired=args.paired)
    pairs = "paired with the champion's scores" if record.paired else "unpaired (routing alone)"
    say(
        f"v{record.version} in canary: answers {record.share:.0%} of traffic (sticky per key), "
        f"{pairs}"
    )
    return EXIT_OK


def _write_reports(evaluation: Evaluation, args: argparse.Namespace) -> None:
    from monitoring.rollout.report import write_html, write_json

    if args.json:
        write_json(evaluation, args.json)
    if args.html:
        write_html(evaluation, args.html)


def cmd_evaluate(config: Config, args: argparse.Namespace) -> int:
    from churn.challenger import record_evidence
    from monitoring.rollout.push import push_evaluation
    from monitoring.rollout.report import render_terminal

    evaluation = _evaluate(config, args)
    print(render_terminal(evaluation), flush=True)
    _write_reports(evaluation, args)
    if not args.no_record:
        record_evidence(config, evaluation.evidence.challenger, evaluation.summary())
    if args.pushgateway:
        push_evaluation(evaluation, args.pushgateway)
    return evaluation.decision.exit_code


def cmd_promote(config: Config, args: argparse.Namespace) -> int:
    from churn.challenger import promote_challenger
    from monitoring.rollout.report import render_terminal

    evidence: dict[str, Any] | None = None
    if args.override:
        reason = f"promoted over the evidence: {args.override}"
    else:
        evaluation = _evaluate(config, args)
        print(render_terminal(evaluation), flush=True)
        if evaluation.decision.exit_code != EXIT_PROMOTE:
            say(
                f"not promoted: the evidence says {evaluation.decision.verdict} "
                "(--override REASON promotes anyway)"
            )
            return evaluation.decision.exit_code
        evidence = evaluation.summary()
        reason = "; ".join(evaluation.decision.reasons)
    record, result = promote_challenger(config, reason, evidence, model_card=args.model_card)
    was = f" (was v{result.previous})" if result.previous else ""
    say(f"promoted {config.mlflow.model_name} v{record.version} to @production{was}")
    if result.exported_to is not None:
        say(f"serving v{result.version}: bundle and release.json in {result.exported_to}/")
    say("@challenger removed; the record says promoted")
    return EXIT_OK


def cmd_abort(config: Config, args: argparse.Namespace) -> int:
    from churn.challenger import abort_challenger

    record, version = abort_challenger(config, args.reason)
    stage = record.stage if record is not None else "no usable record"
    say(f"v{version} removed from @challenger ({stage}); the champion answers everything")
    return EXIT_OK


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    from churn.challenger import rollout_status

    champion, state = rollout_status(config)
    name = config.mlflow.model_name
    if args.json:
        payload = {
            "model_name": name,
            "champion": champion,
            "challenger": None if state is None else state.version,
            "record": None
            if state is None or state.record is None
            else json.loads(state.record.to_json()),
            "problem": None if state is None else state.problem,
        }
        print(json.dumps(payload, indent=2))
        return EXIT_OK
    print(f"{name}: @production v{champion or 'none'}")
    if state is None:
        print("no @challenger: no rollout in progress")
    elif state.record is None:
        print(f"@challenger v{state.version} is NOT used by the API: {state.problem}")
    else:
        print("\n".join(_record_lines(state.record)))
    return EXIT_OK


COMMANDS = {
    "start": cmd_start,
    "canary": cmd_canary,
    "evaluate": cmd_evaluate,
    "promote": cmd_promote,
    "abort": cmd_abort,
    "status": cmd_status,
}


def _expected_errors() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException

    return (
        BundleError,
        ConfigError,
        EvaluationError,
        PredictionLogError,
        PromotionError,
        RegistryError,  # PromotionLocked and RegistryUnavailable included
        RolloutError,
        MlflowException,
        OSError,
        ValueError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        with bounded_http_retries():
            return COMMANDS[args.command](config, args)
    except GateFailed as exc:
        print(f"rollout: gate refused: {exc.decision.summary()}: {exc}", file=sys.stderr)
        return EXIT_REJECT
    except _expected_errors() as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"rollout: error: {redact(first)}", file=sys.stderr)
        return EXIT_ERROR
