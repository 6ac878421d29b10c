"""The log's tables and engines: one row per request, feedback per prediction.

``prediction_batches`` holds a request's features, probabilities and risk tiers as
column-wise JSON (portable across SQLite and PostgreSQL); ``shadow_predictions`` what a model
that did not answer said about the same rows (progressive delivery, churn/rollout.py);
``feedback`` holds the true outcome of a prediction, keyed by its id. Engines bound every
wait by one timeout (see ``make_engine``), which the writer's shutdown wait is derived from.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic_core import to_json
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
)
from sqlalchemy.exc import SQLAlchemyError

from churn.prediction_log.ids import BATCH_ID_CHARS

metadata = MetaData()

prediction_batches = Table(
    "prediction_batches",
    metadata,
    Column("batch_id", String(BATCH_ID_CHARS), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("model_version", String(64), nullable=False),
    Column("rows", Integer, nullable=False),
    # {"feature": [value per prediction], ...}
    Column("features", JSON(none_as_null=True), nullable=False),
    Column("probabilities", JSON, nullable=False),
    Column("risk_tiers", JSON, nullable=False),
)

# What the challenger said about a served request while it was in shadow (or, in canary, what
# the model that did not answer said): paired with the served answer by the same batch_id, so
# row i here and row i of the served batch share one prediction id (and its feedback).
shadow_predictions = Table(
    "shadow_predictions",
    metadata,
    Column("batch_id", String(BATCH_ID_CHARS), primary_key=True),
    Column("model_version", String(64), primary_key=True),  # the version that scored in shadow
    Column("served_version", String(64), nullable=False),  # the version that answered
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("rows", Integer, nullable=False),
    Column("probabilities", JSON, nullable=False),
    Column("risk_tiers", JSON, nullable=False),
)

feedback = Table(
    "feedback",
    metadata,
    Column("prediction_id", String(64), primary_key=True),
    Column("batch_id", String(BATCH_ID_CHARS), nullable=False, index=True),
    Column("outcome", Integer, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)


class PredictionLogError(RuntimeError):
    """The prediction log store cannot be reached or used; the message says which and why."""


def normalise_url(database_url: str) -> str:
    """postgres:// and postgresql:// use psycopg2 (what the image ships); SQLAlchemy 2.1
    would otherwise pick psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg2://" + database_url.removeprefix(prefix)
    return database_url


def _json_text(value: Any) -> str:
    """JSON for the log's columns, in Rust (pydantic-core): a 1,000-row batch's arrays in a
    quarter of json.dumps' time. NaN and infinities become null (valid JSON everywhere)."""
    return to_json(value, inf_nan_mode="null").decode()


# Seconds one statement may wait for the store (a lock, a slow server) before it fails; the
# writer's shutdown wait is derived from the same value (PredictionLogWriter.close).
DEFAULT_WRITE_TIMEOUT = 4.0


def make_engine(database_url: str, timeout: float = DEFAULT_WRITE_TIMEOUT) -> Engine:
    """An engine whose every wait is bounded by `timeout` seconds: a store that hangs or is
    locked must not hold the writer (or the shutdown that waits for it) for longer."""
    database_url = normalise_url(database_url)
    if database_url.startswith("sqlite"):
        engine = create_engine(
            database_url, connect_args={"timeout": timeout}, json_serializer=_json_text
        )
        event.listen(engine, "connect", _sqlite_write_ahead_log)
        return engine
    connect_args: dict[str, Any] = {}
    if database_url.startswith(("postgresql", "postgres")):
        connect_args = {
            "connect_timeout": max(1, math.ceil(timeout)),
            "options": f"-c statement_timeout={int(timeout * 1000)}",
        }
    return create_engine(
        database_url,
        connect_args=connect_args,
        json_serializer=_json_text,
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=2,
        pool_timeout=timeout,
    )


def _sqlite_write_ahead_log(dbapi_connection: Any, _record: Any) -> None:
    """WAL with synchronous=NORMAL: a commit appends to the log instead of syncing the whole
    database (the rollback journal's fsyncs were most of the writer's time); readers do not
    block the writer. A power cut may lose the last commits, never corrupt the file."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def create_tables(engine: Engine) -> None:
    """Create the log tables if they do not exist (idempotent, safe from several workers)."""
    try:
        metadata.create_all(engine, checkfirst=True)
    except SQLAlchemyError as exc:
        # Two workers racing to create the same table: the loser sees "already exists".
        if "already exists" not in str(exc):
            raise
