"""The prediction log: every served prediction in a SQL store, written off the request path.

The API hands batches of predictions to a :class:`PredictionLogWriter`, whose single thread
writes them in bulk. Enqueueing is O(1) and never blocks: when the bounded queue is full the
records are dropped and counted, so a slow or absent store never slows serving. Failed writes
are retried with exponential backoff, so writing resumes by itself when the store is back.

Feedback (the true outcome of a prediction) joins the log by ``prediction_id``;
:func:`read_predictions` returns both as one DataFrame for the drift and live-accuracy jobs.
SQLite by default, PostgreSQL when the URL says so; features are JSON, portable across both.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    create_engine,
    delete,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import SQLAlchemyError

logger = logging.getLogger("churn.prediction_log")

metadata = MetaData()

predictions = Table(
    "predictions",
    metadata,
    Column("prediction_id", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("model_version", String(64), nullable=False),
    Column("features", JSON, nullable=False),
    Column("probability", Float, nullable=False),
    Column("risk_tier", String(16), nullable=False),
)


class _PreparedJSON(TypeDecorator[str]):
    """The JSON column, bound from text the writer has already serialised (no per-row dumps)."""

    impl = JSON
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None


class _PreparedDateTime(TypeDecorator[Any]):
    """The timestamp column, bound from a value converted once per batch, not once per row."""

    impl = DateTime
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None


# What the writer inserts into: the same table, with the two columns whose per-row conversion
# by SQLAlchemy cost more than the database write itself (features JSON, the timestamp).
_predictions_prepared = Table(
    "predictions",
    MetaData(),
    *(
        Column(
            c.name,
            _PreparedJSON()
            if c.name == "features"
            else _PreparedDateTime(timezone=True)
            if c.name == "created_at"
            else c.type,
        )
        for c in predictions.columns
    ),
)

INSERT_COLUMNS = tuple(c.name for c in _predictions_prepared.columns)
feedback = Table(
    "feedback",
    metadata,
    Column("prediction_id", String(64), primary_key=True),
    Column("outcome", Integer, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)

DropCallback = Callable[[str, int], None]


class PredictionLogError(RuntimeError):
    """The prediction log store cannot be reached or used; the message says which and why."""


def normalise_url(database_url: str) -> str:
    """postgres:// and postgresql:// use psycopg2 (what the image ships); SQLAlchemy 2.1
    would otherwise pick psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg2://" + database_url.removeprefix(prefix)
    return database_url


def make_engine(database_url: str) -> Engine:
    """An engine with short timeouts: a store that hangs must not hold the writer forever."""
    database_url = normalise_url(database_url)
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"timeout": 5})
        event.listen(engine, "connect", _sqlite_write_ahead_log)
        return engine
    connect_args: dict[str, Any] = {}
    if database_url.startswith(("postgresql", "postgres")):
        connect_args = {"connect_timeout": 3, "options": "-c statement_timeout=10000"}
    return create_engine(
        database_url,
        connect_args=connect_args,
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=2,
        pool_timeout=5,
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


@dataclass
class PredictionBatch:
    """Predictions from one request, kept as columns until the writer thread expands them."""

    ids: Sequence[str]
    created_at: float  # Unix time; converted to datetime in the writer thread
    model_version: str
    columns: dict[str, Sequence[Any]]
    probabilities: Sequence[float]
    tiers: Sequence[str]

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self) -> list[dict[str, Any]]:
        created = datetime.fromtimestamp(self.created_at, UTC)
        names = list(self.columns)
        values = list(zip(*(self.columns[n] for n in names), strict=True))
        return [
            {
                "prediction_id": pid,
                "created_at": created,
                "model_version": self.model_version,
                "features": dict(zip(names, row, strict=True)),
                "probability": float(p),
                "risk_tier": tier,
            }
            for pid, row, p, tier in zip(
                self.ids, values, self.probabilities, self.tiers, strict=True
            )
        ]

    def prepared_rows(self, dialect: Dialect) -> list[tuple[Any, ...]]:
        """Rows for the writer's insert (see `prepared_rows`)."""
        return prepared_rows([self], dialect)


def prepared_rows(batches: Sequence[PredictionBatch], dialect: Dialect) -> list[tuple[Any, ...]]:
    """Rows for the writer's insert, in `INSERT_COLUMNS` order: features as JSON text (encoded
    column-wise over consecutive batches with the same features) and each batch's timestamp
    converted once."""
    convert = predictions.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
    rows: list[tuple[Any, ...]] = []
    start = 0
    while start < len(batches):
        names = list(batches[start].columns)
        end = start + 1
        while end < len(batches) and list(batches[end].columns) == names:
            end += 1
        run = batches[start:end]
        columns = {n: [v for b in run for v in b.columns[n]] for n in names}
        created: list[Any] = []
        for b in run:
            stamp: Any = datetime.fromtimestamp(b.created_at, UTC)
            created += [convert(stamp) if convert is not None else stamp] * len(b)
        rows += zip(
            [pid for b in run for pid in b.ids],
            created,
            [b.model_version for b in run for _ in range(len(b))],
            features_json(columns) if names else ["{}"] * len(created),
            [float(p) for b in run for p in b.probabilities],
            [t for b in run for t in b.tiers],
            strict=True,
        )
        start = end
    return rows


def _in_groups(batches: list[PredictionBatch], rows: int) -> Iterator[list[PredictionBatch]]:
    """Consecutive batches, about `rows` rows a group (a larger batch is a group alone)."""
    group: list[PredictionBatch] = []
    size = 0
    for batch in batches:
        group.append(batch)
        size += len(batch)
        if size >= rows:
            yield group
            group, size = [], 0
    if group:
        yield group


_NOT_JSON_FLOATS = frozenset({"nan", "inf", "-inf"})


def _encode_column(values: Sequence[Any]) -> list[str]:
    """Each value as JSON, as json.dumps would write it; one C-level map for the common types."""
    kinds = set(map(type, values))
    if kinds <= {str}:
        return list(map(json.encoder.encode_basestring_ascii, values))
    if kinds <= {int}:
        return list(map(int.__repr__, values))
    if kinds <= {float}:
        encoded = list(map(float.__repr__, values))
        if not _NOT_JSON_FLOATS.intersection(encoded):
            return encoded
    return [json.dumps(v) for v in values]


def features_json(columns: Mapping[str, Sequence[Any]]) -> list[str]:
    """One JSON object per row (feature name -> value, in column order), built column-wise."""
    names = list(columns)
    if not names:
        return []
    template = "{" + ",".join(json.dumps(n).replace("%", "%%") + ":%s" for n in names) + "}"
    encoded = [_encode_column(columns[n]) for n in names]
    return [template % values for values in zip(*encoded, strict=True)]


@dataclass
class _Backoff:
    initial: float = 0.5
    maximum: float = 10.0
    current: float = field(default=0.0)

    def failed(self) -> float:
        self.current = min(self.maximum, self.current * 2 if self.current else self.initial)
        return self.current

    def reset(self) -> None:
        self.current = 0.0


# Small statements (6 columns x 25 rows = 150 parameters, under SQLite's oldest limit of
# 999) with a yield of the CPU after each: the writer shares the core with the event loop,
# and a 100-row statement was a millisecond the loop could not run (the /predict p99).
ROWS_PER_STATEMENT = 25


@functools.cache
def _multi_row_insert(dialect: Dialect, rows: int) -> str:
    """INSERT INTO predictions (...) VALUES (?, ...), (?, ...), ... for `rows` rows."""
    single = str(insert(_predictions_prepared).compile(dialect=dialect))
    head, _, values = single.partition(" VALUES ")
    return f"{head} VALUES {', '.join([values] * rows)}"


def _yield_cpu() -> None:
    """Let the threads that answer requests run before the next statement (POSIX)."""
    if hasattr(os, "sched_yield"):
        os.sched_yield()


class PredictionLogWriter:
    """Bounded queue plus one writer thread; drops (and counts) rather than blocking callers."""

    def __init__(
        self,
        engine: Engine,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        on_drop: DropCallback | None = None,
        max_backoff: float = 10.0,
    ) -> None:
        self.engine = engine
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.on_drop = on_drop or (lambda reason, n: None)
        self._queue: deque[PredictionBatch] = deque()
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._backoff = _Backoff(maximum=max_backoff)
        self._pending_ids: set[str] = set()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.healthy = True
        self.last_error: str | None = None
        self._last_drop_log = 0.0
        self._tables_ready = False

    # ------------------------------------------------------------------ caller side

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def enqueue(self, batch: PredictionBatch) -> bool:
        """Queue a batch for writing; False (and counted as dropped) when the queue is full."""
        n = len(batch)
        with self._lock:
            if self._queued_rows + n > self.queue_size:
                full = True
            else:
                full = False
                self._queue.append(batch)
                self._queued_rows += n
                self._pending_ids.update(batch.ids)
        if full:
            self._dropped("queue_full", n)
            return False
        if self._queued_rows >= self.batch_size:
            self._wake.set()
        return True

    def is_pending(self, prediction_id: str) -> bool:
        """True while a prediction is queued here but not yet written."""
        return prediction_id in self._pending_ids

    @property
    def queued(self) -> int:
        return self._queued_rows

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued (within `timeout`), then stop; the rest is counted as dropped."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            left = self._queued_rows
            self._queue.clear()
            self._queued_rows = 0
            self._pending_ids.clear()
        if left:
            self._dropped("shutdown", left)

    # ------------------------------------------------------------------ writer thread

    def _dropped(self, reason: str, n: int) -> None:
        self.on_drop(reason, n)
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:  # one line per 10 s, not one per request
            self._last_drop_log = now
            logger.warning(
                "prediction log dropped %d record(s): %s",
                n,
                reason,
                extra={"reason": reason, "dropped": n, "last_error": self.last_error},
            )

    def _take(self) -> list[PredictionBatch]:
        taken: list[PredictionBatch] = []
        rows = 0
        with self._lock:
            while self._queue and rows < self.batch_size:
                batch = self._queue.popleft()
                taken.append(batch)
                rows += len(batch)
            self._queued_rows -= rows
        return taken

    def prepare(self) -> bool:
        """Create the tables now if the store is reachable; otherwise the writer retries."""
        try:
            create_tables(self.engine)
        except SQLAlchemyError as exc:
            self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            logger.warning(
                "prediction log store unavailable at start (%s); predictions are "
                "served and writing starts when it is back",
                self.last_error,
            )
            return False
        self._tables_ready = True
        return True

    def _write(self, batches: list[PredictionBatch]) -> None:
        """Everything taken, in one transaction.

        SQLite gets multi-row INSERTs of `ROWS_PER_STATEMENT` rows, each prepared just before
        it is sent: the driver's executemany released and retook the GIL for every row, and
        preparing 500 rows at once held it for milliseconds, both of which stalled the event
        loop (the /predict p99). Other stores go through SQLAlchemy Core, whose multi-row
        VALUES is what makes PostgreSQL fast.
        """
        if not self._tables_ready:
            create_tables(self.engine)
            self._tables_ready = True
        try:
            with self.engine.begin() as conn:
                dialect = conn.dialect
                if dialect.paramstyle == "qmark":
                    for group in _in_groups(batches, ROWS_PER_STATEMENT):
                        rows = prepared_rows(group, dialect)
                        for start in range(0, len(rows), ROWS_PER_STATEMENT):
                            chunk = rows[start : start + ROWS_PER_STATEMENT]
                            conn.exec_driver_sql(
                                _multi_row_insert(dialect, len(chunk)),
                                tuple(itertools.chain.from_iterable(chunk)),
                            )
                            _yield_cpu()
                else:
                    names = INSERT_COLUMNS
                    records = [
                        dict(zip(names, row, strict=True))
                        for row in prepared_rows(batches, dialect)
                    ]
                    conn.execute(insert(_predictions_prepared), records)
        except SQLAlchemyError:
            self._tables_ready = False  # the store may have been recreated: check again
            raise

    def _run(self) -> None:
        held: list[PredictionBatch] = []  # batches whose write failed and is being retried
        held_ids: list[str] = []
        while True:
            stopping = self._stopping.is_set()
            if not held:
                batches = self._take()
                if not batches:
                    if stopping:
                        return
                    self._wake.wait(self.flush_interval)
                    self._wake.clear()
                    continue
                held = batches
                held_ids = [pid for b in batches for pid in b.ids]
            try:
                self._write(held)
            except SQLAlchemyError as exc:
                delay = self._backoff.failed()
                self.healthy = False
                self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                if _is_data_error(exc) or stopping:
                    self._dropped("write_error" if not stopping else "shutdown", len(held_ids))
                    self._forget(held_ids)
                    held, held_ids = [], []
                    continue
                logger.warning(
                    "prediction log write failed, retrying in %.1fs: %s", delay, self.last_error
                )
                self._stopping.wait(delay)
                continue
            if not self.healthy:
                logger.info("prediction log store is back; writing resumed")
            self.healthy = True
            self._backoff.reset()
            self.written += len(held_ids)
            self._forget(held_ids)
            held, held_ids = [], []

    def _forget(self, ids: list[str]) -> None:
        with self._lock:
            self._pending_ids.difference_update(ids)


def _is_data_error(exc: SQLAlchemyError) -> bool:
    """Errors that retrying cannot fix (duplicate id, bad value), as opposed to outages."""
    from sqlalchemy.exc import DataError, IntegrityError

    return isinstance(exc, IntegrityError | DataError)


# ---------------------------------------------------------------------- feedback and reading


def prediction_exists(engine: Engine, prediction_id: str) -> bool:
    with engine.connect() as conn:
        row = conn.execute(
            select(predictions.c.prediction_id).where(predictions.c.prediction_id == prediction_id)
        ).first()
    return row is not None


def record_feedback(engine: Engine, prediction_id: str, outcome: bool) -> None:
    """Store (or replace) the true outcome of a prediction."""
    with engine.begin() as conn:
        conn.execute(delete(feedback).where(feedback.c.prediction_id == prediction_id))
        conn.execute(
            insert(feedback).values(
                prediction_id=prediction_id, outcome=int(outcome), received_at=datetime.now(UTC)
            )
        )


BASE_COLUMNS = ["prediction_id", "created_at", "model_version"]
TAIL_COLUMNS = ["probability", "risk_tier", "outcome"]


def read_predictions(database_url: str, since: datetime | None = None) -> pd.DataFrame:
    """The prediction log joined with feedback, one column per feature.

    Columns: prediction_id, created_at (UTC), model_version, every feature seen in the stored
    JSON (in first-seen order), probability, risk_tier, outcome (1.0/0.0, NaN without feedback).
    """
    engine = make_engine(database_url)
    try:
        query = (
            select(
                predictions.c.prediction_id,
                predictions.c.created_at,
                predictions.c.model_version,
                predictions.c.features,
                predictions.c.probability,
                predictions.c.risk_tier,
                feedback.c.outcome,
            )
            .select_from(
                predictions.outerjoin(
                    feedback, feedback.c.prediction_id == predictions.c.prediction_id
                )
            )
            .order_by(predictions.c.created_at, predictions.c.prediction_id)
        )
        if since is not None:
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
            query = query.where(predictions.c.created_at >= since)
        try:
            with engine.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as exc:
            if "no such table" in str(exc) or "does not exist" in str(exc):
                rows = []
            else:
                raise PredictionLogError(
                    f"{engine.url.render_as_string(hide_password=True)}: cannot read the "
                    f"prediction log ({type(exc).__name__}: {str(exc).splitlines()[0]})"
                ) from None
    finally:
        engine.dispose()
    return _to_frame(rows)


def _to_frame(rows: Sequence[Any]) -> pd.DataFrame:
    features = pd.DataFrame.from_records([dict(r.features or {}) for r in rows])
    base = pd.DataFrame(
        {
            "prediction_id": [r.prediction_id for r in rows],
            "created_at": pd.to_datetime([_utc(r.created_at) for r in rows], utc=True),
            "model_version": [r.model_version for r in rows],
        }
    )
    tail = pd.DataFrame(
        {
            "probability": np.asarray([r.probability for r in rows], dtype=float),
            "risk_tier": [r.risk_tier for r in rows],
            "outcome": np.asarray(
                [np.nan if r.outcome is None else float(r.outcome) for r in rows], dtype=float
            ),
        }
    )
    features = features.drop(columns=[c for c in features if c in BASE_COLUMNS + TAIL_COLUMNS])
    return pd.concat([base, features.reset_index(drop=True), tail], axis=1)


def _utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes (stored as UTC); PostgreSQL returns aware ones."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
