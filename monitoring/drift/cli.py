"""The drift CLI: ``python -m monitoring.drift`` (also ``python -m monitoring.drift_detector``).

Exit codes: 0 no drift, 1 drift, 2 error (one line on stderr naming what to fix),
3 insufficient data: nothing judged (no feature had enough rows for a verdict).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from churn.stores import DEFAULT_PREDICTION_LOG_URL
from monitoring.drift.detection import DEFAULT_ALPHA, DEFAULT_MIN_ROWS, run_drift_check
from monitoring.drift.results import EXIT_CODES, EXIT_ERROR, DriftInputError
from monitoring.drift.sources import (
    load_current_from_log,
    load_reference,
    parse_duration,
    read_frame,
    with_columns,
)
from monitoring.drift.stats import CORRECTIONS
from monitoring.quality.live import DEFAULT_MIN_LABELLED

PROG = "python -m monitoring.drift_detector"
EXIT_HELP = "exit codes:\n" + "".join(f"  {code}  {text}\n" for code, text in EXIT_CODES.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compare current data with the training reference.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=Path("artifacts/metadata.json"),
        help="bundle metadata JSON (feature_schema + reference_profile) or a reference table",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("config.yaml"),
        help="config whose feature lists and risk section describe a reference table "
        "(not read for a metadata.json reference)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--current", type=Path, help="current data, CSV or Parquet")
    source.add_argument(
        "--since", type=parse_duration, help="read the prediction log for this window (24h, 7d)"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", DEFAULT_PREDICTION_LOG_URL),
        help=f"prediction log URL for --since (default: $DATABASE_URL or "
        f"{DEFAULT_PREDICTION_LOG_URL}); a SQLite file that does not exist is an error",
    )
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="family-wise level")
    parser.add_argument("--correction", choices=CORRECTIONS, default="bonferroni")
    parser.add_argument(
        "--min-rows", type=int, default=DEFAULT_MIN_ROWS, help="fewer rows: no verdict"
    )
    parser.add_argument(
        "--min-labelled",
        type=int,
        default=DEFAULT_MIN_LABELLED,
        help="fewer labelled rows: live quality metrics skipped",
    )
    parser.add_argument("--json", type=Path, help="write the JSON report here")
    parser.add_argument("--html", type=Path, help="write the HTML report here")
    parser.add_argument("--pushgateway", help="HOST:PORT of a Prometheus Pushgateway")
    parser.add_argument("--job", default="drift_monitor", help="Pushgateway job name")
    return parser


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise DriftInputError(f"{path}: cannot write report ({exc.strerror or exc})") from exc


def _execute(args: argparse.Namespace) -> int:
    if not 0 < args.alpha < 1:
        raise DriftInputError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if args.min_rows < 1:
        raise DriftInputError(f"--min-rows must be at least 1, got {args.min_rows}")
    reference = load_reference(args.reference, args.config)
    if args.current is not None:
        current = read_frame(args.current)
        label = str(args.current)
    else:
        current, label = load_current_from_log(args.database_url, args.since)
    run = run_drift_check(
        reference,
        current,
        label,
        alpha=args.alpha,
        correction=args.correction,
        min_rows=args.min_rows,
        min_labelled=args.min_labelled,
    )
    from monitoring.drift import report
    from monitoring.drift.push import push_metrics

    print(report.render_terminal(run))
    if args.json:
        _write(args.json, json.dumps(report.report_json(run), indent=2, allow_nan=False))
    if args.html:
        _write(args.html, report.render_html(run, with_columns(current, reference.features)))
    if args.pushgateway:
        push_metrics(run, args.pushgateway, args.job)
    return run.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; every expected failure is one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return _execute(args)
    except DriftInputError as exc:
        print(f"drift_detector: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
