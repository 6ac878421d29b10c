"""Nightly scoring of the whole customer base on Apache Spark.

    python score_batch.py --input customers.parquet --output scores/ [--model artifacts]
    spark-submit --master yarn score_batch.py --input hdfs:///crm/customers --output ...

Reads a customer table (Parquet or CSV, any path Spark reads), scores every row with the
verified model (a bundle directory or ``models:/name@production``), writes
``<output>/scoring_date=YYYY-MM-DD/`` with the key columns, ``churn_probability``,
``churn_prediction``, ``risk_tier``, ``model_version``, ``scored_at``, ``status``, ``error``,
plus ``_drift.json``, ``_drift.html`` and ``_summary.json`` beside the scores. Defaults come
from config.yaml's ``batch`` section; flags win. Exit 0 published, 1 too many invalid rows
(the previous partition stays), 2 error.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date
from pathlib import Path
from typing import Any

from churn.config import ConfigError, load_config


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date (YYYY-MM-DD)") from None


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a share between 0 and 1 (e.g. 0.01)")
    return value


def _conf(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY=VALUE")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="score_batch.py", description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="customer table: Parquet or CSV path/URI")
    p.add_argument("--output", required=True, help="scores table root (date partitions)")
    p.add_argument("--model", default="artifacts", help="bundle dir or models:/name@alias")
    p.add_argument("--config", type=Path, default=Path("config.yaml"), help="batch defaults")
    p.add_argument("--tracking-uri", help="MLflow URI for models:/ (default: env, then config)")
    p.add_argument("--date", type=_date, help="scoring date partition (default: today, UTC)")
    p.add_argument("--format", choices=("parquet", "csv"), help="default: by extension")
    p.add_argument("--key-columns", help="comma-separated pass-through columns")
    p.add_argument("--max-invalid-share", type=_share, help="refuse above this share")
    p.add_argument("--allow-missing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--drift-sample-size", type=int, help="numeric sample for drift tests")
    p.add_argument("--arrow-batch-rows", type=int, help="rows per Arrow batch")
    p.add_argument("--alpha", type=float, default=0.05, help="drift test level")
    p.add_argument("--pushgateway", help="HOST:PORT of a Prometheus Pushgateway")
    p.add_argument("--push-job", default="batch_scoring", help="Pushgateway job name")
    p.add_argument("--master", help="Spark master (default: spark-submit's, else local[*])")
    p.add_argument("--conf", type=_conf, action="append", default=[], help="Spark KEY=VALUE")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"score_batch: error: {exc}", file=sys.stderr)
        return 2
    from churn.batch.job import (
        EXIT_ERROR,
        BatchInputError,
        BatchJob,
        run_batch,
        spark_session,
    )
    from churn.batch.output import OutputError

    batch = config.batch
    keys = args.key_columns.split(",") if args.key_columns is not None else batch.key_columns
    fields = {
        "input": args.input,
        "output": args.output,
        "model": args.model,
        "tracking_uri": args.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or config.mlflow.tracking_uri,
        "input_format": args.format,
        "key_columns": tuple(k.strip() for k in keys if k.strip()),
        "max_invalid_share": _pick(args.max_invalid_share, batch.max_invalid_share),
        "allow_missing": _pick(args.allow_missing, batch.allow_missing),
        "drift_sample_size": _pick(args.drift_sample_size, batch.drift_sample_size),
        "arrow_batch_rows": _pick(args.arrow_batch_rows, batch.arrow_batch_rows),
        "alpha": args.alpha,
        "pushgateway": args.pushgateway,
        "push_job": args.push_job,
    }
    job = BatchJob(**fields, **({"scoring_date": args.date} if args.date else {}))
    from pyspark.sql import SparkSession

    existing = SparkSession.getActiveSession()  # a caller's session (tests, notebooks) stays up
    spark = spark_session(args.master, dict(args.conf), app_name="churn-score-batch")
    try:
        result = run_batch(spark, job)
    except (BatchInputError, OutputError) as exc:
        print(f"score_batch: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if existing is None:
            spark.stop()
    print(result.line())
    if not result.published:
        print(
            f"score_batch: {result.invalid_share:.2%} of rows are invalid (limit "
            f"{result.max_invalid_share:.2%}): the previous partition was kept; this run's "
            f"output is in {result.partition}",
            file=sys.stderr,
        )
    return result.exit_code


def _pick(flag: Any, configured: Any) -> Any:
    return configured if flag is None else flag


if __name__ == "__main__":
    sys.exit(main())
