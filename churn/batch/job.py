"""The nightly scoring job: read customers, score with the verified model, write the date
partition with its drift report, replace the previous one atomically.

``score_batch.py`` is the command line around :func:`run_batch`; tests call it directly with
their own SparkSession. Exit codes: 0 published; 1 more invalid rows than allowed (nothing
replaced, the refused output kept under ``_rejected/``); 2 an input, model or output error.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark import AccumulatorParam, TaskContext
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from churn.batch.drift import judge, population, push_drift_metrics
from churn.batch.output import HadoopFiles, OutputError, PartitionPaths, publish, reject
from churn.batch.scoring import (
    BundlePayload,
    ScoringSetupError,
    bundle_files,
    materialise,
    scorer_for,
)
from churn.batch.summary import (
    ScoreSummary,
    first_per_partition,
    merge_partitions,
    sample_fraction,
)
from churn.batch.validation import STATUS_INVALID, STATUS_OK
from churn.bundle import BundleError, ModelBundle, bundle_directory
from churn.inference import choose_predictor
from churn.profile import ProfileError, ReferenceProfile
from churn.risk import Thresholds

logger = logging.getLogger("churn.batch")

ROOT = Path(__file__).resolve().parents[2]
EXIT_OK, EXIT_TOO_MANY_INVALID, EXIT_ERROR = 0, 1, 2
SUMMARY_FILE, DRIFT_JSON, DRIFT_HTML = "_summary.json", "_drift.json", "_drift.html"
# Environment the executors need to verify a signed bundle (see churn.bundle).
SIGNING_ENV = ("BUNDLE_SIGNING_KEY", "BUNDLE_SIGNING_KEY_FILE")
# user:password@ in a URL (a tracking URI may carry them): never printed.
_CREDENTIALS = re.compile(r"://[^/@\s]+@")
# Spark redacts conf values whose key matches this in its UI and logs; add the signing key.
REDACTION_REGEX = r"(?i)secret|password|token|access[.]?key|signing[._]?key"
# Input splits per core (Spark's spark.sql.files.minPartitionNum, unless the session sets it):
# tasks of equal size keep every core busy to the end; one task per core would leave a core
# idle while the largest file finishes.
TASKS_PER_CORE = 4


class BatchInputError(ValueError):
    """The job cannot run as asked; the message names the path, column or model to fix."""


@dataclass(frozen=True)
class BatchJob:
    """Everything one run needs (CLI flags over config.yaml's ``batch`` section)."""

    input: str
    output: str
    model: str = "artifacts"
    tracking_uri: str = "sqlite:///mlflow.db"
    scoring_date: date = field(default_factory=lambda: datetime.now(UTC).date())
    input_format: str | None = None
    key_columns: tuple[str, ...] = ("customer_id",)
    max_invalid_share: float = 0.01
    allow_missing: bool = True
    drift_sample_size: int = 50_000
    arrow_batch_rows: int = 100_000
    alpha: float = 0.05
    pushgateway: str | None = None
    push_job: str = "batch_scoring"
    seed: int = 0


@dataclass
class BatchResult:
    """What a run did; ``summary()`` is written beside the scores as ``_summary.json``."""

    scoring_date: str
    partition: str
    model_name: str
    model_version: str
    model_source: str
    backend: str
    backend_reason: str
    rows: int
    scored: int
    invalid: int
    max_invalid_share: float
    reasons: dict[str, int]
    tiers: dict[str, int]
    drift_detected: bool
    drifted_features: list[str]
    drift_summary: str
    scored_at: str
    published: bool = False
    exit_code: int = EXIT_OK
    seconds: dict[str, float] = field(default_factory=dict)  # per phase, for operators

    @property
    def invalid_share(self) -> float:
        return self.invalid / self.rows if self.rows else 0.0

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "invalid_share": self.invalid_share}

    def line(self) -> str:
        reasons = ", ".join(f"{k} {v:,}" for k, v in self.reasons.items()) or "none"
        verdict = "published" if self.published else "NOT published"
        return (
            f"{self.scoring_date}: {self.rows:,} rows, {self.scored:,} scored, "
            f"{self.invalid:,} invalid ({self.invalid_share:.2%}; limit "
            f"{self.max_invalid_share:.2%}; reasons: {reasons}); model "
            f"{self.model_name} v{self.model_version} ({self.backend}); "
            f"drift: {self.drift_summary}; {verdict} at {self.partition}"
        )


# --------------------------------------------------------------------------- Spark session


def spark_session(
    master: str | None = None, conf: Mapping[str, str] | None = None, app_name: str = "churn"
) -> SparkSession:
    """A session whose Python workers can import this project and verify signed bundles.

    No ``master`` keeps what spark-submit set, or Spark's own default ``local[*]``.
    """
    path = os.environ.get("PYTHONPATH", "")
    if str(ROOT) not in path.split(os.pathsep):  # local workers import churn from here
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), path) if p)
    # Local workers run this interpreter (this venv), not whatever python3 is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    settings = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        "spark.redaction.regex": REDACTION_REGEX,
        "spark.ui.showConsoleProgress": "false",
        **dict(conf or {}),
    }
    if master and not master.startswith("local"):
        # Local workers inherit this process's environment; cluster executors need it passed.
        for name in SIGNING_ENV:
            if name in os.environ:
                settings.setdefault(f"spark.executorEnv.{name}", os.environ[name])
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class PreparedModel:
    bundle: ModelBundle
    payload: BundlePayload
    backend_reason: str
    source: str


def prepare_model(job: BatchJob) -> PreparedModel:
    """Fetch the bundle (registry or disk), verify the exact bytes that will be broadcast,
    and choose the backend the API would serve it with."""
    try:
        if job.model.startswith("models:/"):
            from churn.registry import download_bundle

            # the files are read into memory (and broadcast) before the directory goes
            with tempfile.TemporaryDirectory(prefix="churn-batch-bundle-") as tmp:
                directory = download_bundle(job.tracking_uri, job.model, Path(tmp)).directory
                files = bundle_files(directory)
        else:
            if not Path(job.model).exists():
                raise BatchInputError(f"{job.model}: model bundle not found")
            files = bundle_files(bundle_directory(Path(job.model)))
        bundle = materialise(files)
        thresholds = Thresholds.from_metadata(bundle.metadata)
        predictor, reason = choose_predictor(bundle, "auto", thresholds)
    except BatchInputError:
        raise
    except (BundleError, ScoringSetupError, ValueError) as exc:
        raise BatchInputError(str(exc)) from None
    except Exception as exc:  # registry and network failures come in many types
        detail = _CREDENTIALS.sub("://***@", f"{type(exc).__name__}: {exc}")
        raise BatchInputError(f"{job.model}: cannot fetch the model ({detail})") from None
    payload = BundlePayload(files=files, backend=predictor.backend, allow_missing=job.allow_missing)
    return PreparedModel(bundle, payload, reason, job.model)


# --------------------------------------------------------------------------- input


def read_customers(spark: SparkSession, path: str, input_format: str | None) -> DataFrame:
    """The customer table: Parquet, or CSV with a header (every cell read as text and
    checked per row, so one malformed cell cannot fail the read)."""
    fmt = input_format or ("csv" if path.rstrip("/").lower().endswith(".csv") else "parquet")
    try:
        if fmt == "csv":
            return spark.read.option("header", True).option("mode", "PERMISSIVE").csv(path)
        return spark.read.parquet(path)
    except Exception as exc:  # AnalysisException: path missing, not Parquet, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BatchInputError(f"{path}: cannot read the table as {fmt} ({first})") from None


def check_columns(frame: DataFrame, features: Sequence[str], keys: Sequence[str]) -> None:
    """Every feature and key column present (with a 'did you mean'), and no key that is also
    a feature (the output would carry it twice)."""
    columns = list(frame.columns)
    for role, names in (("feature", features), ("key", keys)):
        for name in names:
            if name not in columns:
                hint = difflib.get_close_matches(name, columns, n=1)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
                raise BatchInputError(
                    f"the customer table has no {role} column '{name}'{suggestion}"
                )
    clash = [k for k in keys if k in features]
    if clash:
        raise BatchInputError(f"key column(s) {', '.join(clash)} are model features")


def _output_schema(frame: DataFrame, keys: Sequence[str]) -> T.StructType:
    by_name = {f.name: f for f in frame.schema.fields}
    return T.StructType(
        [by_name[k] for k in keys]
        + [
            T.StructField("churn_probability", T.DoubleType()),
            T.StructField("churn_prediction", T.BooleanType()),
            T.StructField("risk_tier", T.StringType()),
            T.StructField("model_version", T.StringType()),
            T.StructField("status", T.StringType()),
            T.StructField("error", T.StringType()),
            T.StructField("error_reasons", T.ArrayType(T.StringType())),
        ]
    )


class PartitionSummaries(AccumulatorParam):
    """Accumulates ``{partition: ScoreSummary}``; a partition's first summary wins (a task
    run twice, retried or speculative, scored the same rows)."""

    def zero(self, value: dict[int, ScoreSummary]) -> dict[int, ScoreSummary]:
        return {}

    def addInPlace(
        self, value1: dict[int, ScoreSummary], value2: dict[int, ScoreSummary]
    ) -> dict[int, ScoreSummary]:
        return first_per_partition(value1, value2.items())


def score_frame(
    frame: DataFrame,
    model: PreparedModel,
    keys: Sequence[str],
    summaries: Any = None,
    template: ScoreSummary | None = None,
) -> DataFrame:
    """Scores of every row, computed on the executors in one pass.

    With ``summaries`` (an accumulator of :class:`PartitionSummaries`) and ``template`` (an
    empty :class:`ScoreSummary`), each task also adds its partition's counts and drift
    statistics, seeded by the partition so a rerun draws the same sample."""
    spark = frame.sparkSession
    broadcast = spark.sparkContext.broadcast(model.payload)
    key_list = list(keys)
    features = model.bundle.schema.names

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        scorer = scorer_for(broadcast.value)
        summary: ScoreSummary | None = None
        partition = 0
        if summaries is not None and template is not None:
            context = TaskContext.get()
            partition = context.partitionId() if context is not None else 0
            summary = template.fresh(seed=(*template.seed, partition))
        for batch in batches:
            yield scorer.score(batch, key_list, summary)
        if summary is not None:
            summaries.add({partition: summary})

    return frame.select(*key_list, *features).mapInPandas(
        score, schema=_output_schema(frame, key_list)
    )


@contextmanager
def _session_settings(spark: SparkSession, settings: Mapping[str, str]) -> Iterator[None]:
    """Set SQL settings for one run and put the session's own values back afterwards."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in previous.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)


# --------------------------------------------------------------------------- the run


def run_batch(spark: SparkSession, job: BatchJob) -> BatchResult:
    """Score the table and publish the date partition (or refuse to, see the exit codes).

    One Spark pass reads, validates, scores and writes; the counts and the drift statistics
    come back from the same tasks (:mod:`churn.batch.summary`), so nothing is cached or read
    twice. Before it, one count of the table (Parquet: from the files' footers) sizes the
    drift sample and is what the summaries must add up to."""
    if not 0 <= job.max_invalid_share <= 1:
        raise BatchInputError(f"max invalid share must be in [0, 1], got {job.max_invalid_share}")
    model = prepare_model(job)
    bundle = model.bundle
    schema = bundle.schema
    try:
        reference = ReferenceProfile.from_dict(bundle.metadata["reference_profile"])
        reference.require(schema.numeric, schema.categorical)
    except (KeyError, ProfileError) as exc:
        raise BatchInputError(
            f"{job.model}: the bundle has no usable reference profile for drift ({exc})"
        ) from None
    cores = spark.sparkContext.defaultParallelism
    settings = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(job.arrow_batch_rows)}
    if spark.conf.get("spark.sql.files.minPartitionNum", None) is None:
        settings["spark.sql.files.minPartitionNum"] = str(TASKS_PER_CORE * cores)
    with _session_settings(spark, settings):
        return _run(spark, job, model, reference, cores)


def _run(
    spark: SparkSession,
    job: BatchJob,
    model: PreparedModel,
    reference: ReferenceProfile,
    cores: int,
) -> BatchResult:
    bundle, schema = model.bundle, model.bundle.schema
    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        now = time.perf_counter()
        seconds[name] = round(now - clock[0], 3)
        clock[0] = now

    customers = read_customers(spark, job.input, job.input_format)
    check_columns(customers, schema.names, job.key_columns)
    try:
        expected = customers.count()
    except Exception as exc:
        raise BatchInputError(f"{job.input}: cannot read the table ({cause(exc)})") from None
    if expected == 0:
        raise BatchInputError(f"{job.input}: the customer table has no rows")
    if customers.rdd.getNumPartitions() < cores:  # one big file (or one row group): use every core
        customers = customers.repartition(cores)
    lap("count")

    template = ScoreSummary(
        tuple(schema.numeric),
        tuple(schema.categorical),
        sample_size=job.drift_sample_size,
        fraction=sample_fraction(expected, job.drift_sample_size),
        seed=(job.seed,),
    )
    summaries = spark.sparkContext.accumulator({}, PartitionSummaries())
    scored_at = datetime.now(UTC).replace(microsecond=0)
    scored = score_frame(customers, model, job.key_columns, summaries, template)
    paths = PartitionPaths.for_run(job.output, job.scoring_date.isoformat())
    files = HadoopFiles(spark)
    written: list[Column | str] = [
        *job.key_columns,
        "churn_probability",
        "churn_prediction",
        "risk_tier",
        "model_version",
        F.lit(scored_at).cast(T.TimestampType()).alias("scored_at"),
        "status",
        "error",
        "error_reasons",
    ]
    try:
        try:
            scored.select(*written).write.mode("overwrite").parquet(paths.staging)
        except Exception as exc:
            raise OutputError(f"scoring into {paths.staging} failed: {cause(exc)}") from exc
        lap("score_and_write")
        summary = merge_partitions(summaries.value, template.fresh())
        if summary.rows != expected:  # fail closed: counts and drift must cover every row
            raise OutputError(
                f"the scoring tasks summarised {summary.rows:,} rows, the table has "
                f"{expected:,} (did {job.input} change during the run?); nothing published"
            )
        drifting = population(summary)
        lap("drift_statistics")
        label = f"{job.input} scored {job.scoring_date.isoformat()}"
        ref_label = f"model {bundle.name} v{bundle.version} training profile"
        run, drift_json, drift_html = judge(
            reference, ref_label, drifting, label, schema.numeric, schema.categorical,
            alpha=job.alpha,
        )  # fmt: skip
        lap("drift_report")
        result = BatchResult(
            scoring_date=job.scoring_date.isoformat(),
            partition=paths.partition,
            model_name=bundle.name,
            model_version=bundle.version,
            model_source=model.source,
            backend=model.payload.backend,
            backend_reason=model.backend_reason,
            rows=summary.rows,
            scored=summary.scored,
            invalid=summary.invalid,
            max_invalid_share=job.max_invalid_share,
            reasons=summary.sorted_reasons(),
            tiers=dict(sorted(summary.tiers.items())),
            drift_detected=run.drift_detected,
            drifted_features=run.drifted_features,
            drift_summary=run.summary_line(),
            scored_at=scored_at.isoformat(),
            seconds=seconds,
        )
        too_many = result.invalid_share > job.max_invalid_share
        result.published = not too_many
        result.exit_code = EXIT_TOO_MANY_INVALID if too_many else EXIT_OK
        files.write_bytes(f"{paths.staging}/{DRIFT_JSON}", _json(drift_json))
        files.write_bytes(f"{paths.staging}/{DRIFT_HTML}", drift_html.encode())
        files.write_bytes(f"{paths.staging}/{SUMMARY_FILE}", _json(result.summary()))
        if too_many:
            result.partition = paths.rejected
            reject(files, paths)
        else:
            publish(files, paths)
    finally:
        if files.exists(paths.staging):
            files.delete(paths.staging)
    if job.pushgateway:
        push_batch_metrics(result, run, job.pushgateway, job.push_job)
    return result


_PYTHON_ERROR = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)\b.*)$", re.MULTILINE)


def cause(exc: BaseException) -> str:
    """One line for a failed Spark job: the Python worker's own error when there is one
    (the last ``SomethingError: ...`` line), else the first line of the message."""
    text = str(exc).strip()
    found = _PYTHON_ERROR.findall(text.split("\n\tat ")[0])
    if found:
        return str(found[-1]).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _json(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()


def push_batch_metrics(result: BatchResult, run: Any, gateway: str, job: str) -> None:
    """The run's counts under ``job`` and the drift gauges under ``<job>_drift``."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    rows = Gauge("batch_scoring_rows", "Rows of the last run", ["status"], registry=registry)
    rows.labels(STATUS_OK).set(result.scored)
    rows.labels(STATUS_INVALID).set(result.invalid)
    reasons = Gauge(
        "batch_scoring_invalid_reason_rows", "Invalid rows per reason", ["reason"],
        registry=registry,
    )  # fmt: skip
    for reason, count in result.reasons.items():
        reasons.labels(reason).set(count)
    Gauge("batch_scoring_published", "1 if the partition was replaced", registry=registry).set(
        int(result.published)
    )
    if result.published:
        Gauge(
            "batch_scoring_last_success_timestamp_seconds",
            "When the last published run scored",
            registry=registry,
        ).set(datetime.fromisoformat(result.scored_at).timestamp())
    try:
        push_to_gateway(gateway, job=job, registry=registry, timeout=10)
        push_drift_metrics(run, gateway, f"{job}_drift")
    except Exception as exc:
        raise OutputError(
            f"pushgateway {gateway}: push failed ({type(exc).__name__}); "
            f"the partition {'was' if result.published else 'was not'} replaced"
        ) from None
