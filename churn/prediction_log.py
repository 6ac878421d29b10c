"""The prediction log: every served prediction in a SQL store, written off the request path.

One row per request (a batch of predictions), its features, probabilities and risk tiers
stored column-wise as JSON. The log's cost then grows with requests, not rows: a 1,000-row
batch is one insert of a few JSON arrays, where a row per prediction cost about 20 µs of
CPU each in Python and SQLite (20 ms per 1,000-row call, more than the model), and the
writer fell behind and dropped records under batch traffic.

A prediction's id is its batch id (12 hex digits of Unix milliseconds, then 16 random) plus
its position in the batch (4 hex digits): ids sort by time, name their batch, and need no
index of their own. Feedback (the true outcome) is stored per prediction id with its batch
id; :func:`read_predictions` expands batches to one row per prediction, joined with
feedback, for the drift and live-accuracy jobs.

The API hands batches to a :class:`PredictionLogWriter`, whose single thread writes them in
bulk. Enqueueing is O(1) and never blocks: when the bounded queue is full the records are
dropped and counted, so a slow or absent store never slows serving. Failed writes are
retried with exponential backoff, so writing resumes by itself when the store is back.
Every enqueued prediction ends exactly once as written or as dropped with a reason, the
batch being written at shutdown included: one timeout (``write_timeout``) bounds both a
statement (SQLite's busy wait, PostgreSQL's statement_timeout) and the shutdown wait.
SQLite by default, PostgreSQL when the URL says so; the JSON is portable across both.
"""

from __future__ import annotations

import functools
import logging
import math
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
    delete,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import SQLAlchemyError

logger = logging.getLogger("churn.prediction_log")

BATCH_ID_CHARS = 28  # 12 hex: Unix time in ms, 16 hex: random
INDEX_CHARS = 4  # position in the batch, hex
MAX_BATCH_ROWS = 16**INDEX_CHARS  # 65,536 predictions per request at most
_SUFFIXES = [f"{i:0{INDEX_CHARS}x}" for i in range(MAX_BATCH_ROWS)]
_HEX = frozenset("0123456789abcdef")

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

feedback = Table(
    "feedback",
    metadata,
    Column("prediction_id", String(64), primary_key=True),
    Column("batch_id", String(BATCH_ID_CHARS), nullable=False, index=True),
    Column("outcome", Integer, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)

DropCallback = Callable[[str, int], None]


def prediction_ids(batch_id: str, rows: int) -> list[str]:
    """The ids of a batch's predictions, in order."""
    if not 0 < rows <= MAX_BATCH_ROWS:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH_ROWS:,} predictions, not {rows:,}")
    return [batch_id + suffix for suffix in _SUFFIXES[:rows]]


def split_prediction_id(prediction_id: str) -> tuple[str, int] | None:
    """(batch id, position) of a well-formed prediction id; None for anything else."""
    if len(prediction_id) != BATCH_ID_CHARS + INDEX_CHARS or not _HEX.issuperset(prediction_id):
        return None
    return prediction_id[:BATCH_ID_CHARS], int(prediction_id[BATCH_ID_CHARS:], 16)


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


@dataclass
class PredictionBatch:
    """The predictions of one request, as columns (one row of ``prediction_batches``)."""

    batch_id: str
    created_at: float  # Unix time
    model_version: str
    columns: Mapping[str, Sequence[Any]]
    probabilities: Sequence[float]
    tiers: Sequence[str]

    def __len__(self) -> int:
        return len(self.probabilities)

    @property
    def ids(self) -> list[str]:
        return prediction_ids(self.batch_id, len(self))

    def record(self) -> dict[str, Any]:
        """The row to insert."""
        return {
            "batch_id": self.batch_id,
            "created_at": datetime.fromtimestamp(self.created_at, UTC),
            "model_version": self.model_version,
            "rows": len(self),
            "features": {name: list(values) for name, values in self.columns.items()},
            "probabilities": list(self.probabilities),  # Python floats (Answers' lists)
            "risk_tiers": list(self.tiers),
        }


def write_batches(engine: Engine, batches: Sequence[PredictionBatch]) -> None:
    """Insert batches in one transaction (what the writer thread does).

    SQLite gets multi-row INSERTs of a few rows each, with a yield of the CPU after each:
    the sqlite3 driver's executemany releases and retakes the GIL for every row, and at a
    few thousand single-prediction requests a second each release let this thread hold up
    the event loop (the /predict p95 and p99 doubled). Other stores go through SQLAlchemy
    Core, whose multi-row VALUES is what makes PostgreSQL fast.
    """
    with engine.begin() as conn:
        dialect = conn.dialect
        if dialect.paramstyle != "qmark":
            conn.execute(insert(prediction_batches), [b.record() for b in batches])
            return
        stamp = prediction_batches.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
        for group in _statement_groups(batches):
            values: list[Any] = []
            for batch in group:
                record = batch.record()
                created = record["created_at"]
                values += (
                    record["batch_id"],
                    stamp(created) if stamp is not None else created,
                    record["model_version"],
                    record["rows"],
                    _json_text(record["features"]),
                    _json_text(record["probabilities"]),
                    _json_text(record["risk_tiers"]),
                )
            conn.exec_driver_sql(_multi_row_insert(dialect, len(group)), tuple(values))
            _yield_cpu()


# 7 columns x 25 rows = 175 parameters, under SQLite's oldest limit of 999; a statement
# also stops at about a thousand predictions, so none holds the GIL for long.
ROWS_PER_STATEMENT = 25
PREDICTIONS_PER_STATEMENT = 1000


def _statement_groups(batches: Sequence[PredictionBatch]) -> Iterator[list[PredictionBatch]]:
    group: list[PredictionBatch] = []
    predictions = 0
    for batch in batches:
        if group and (
            len(group) >= ROWS_PER_STATEMENT or predictions + len(batch) > PREDICTIONS_PER_STATEMENT
        ):
            yield group
            group, predictions = [], 0
        group.append(batch)
        predictions += len(batch)
    if group:
        yield group


@functools.cache
def _multi_row_insert(dialect: Dialect, rows: int) -> str:
    """INSERT INTO prediction_batches (...) VALUES (?, ...), (?, ...), ... for `rows` rows."""
    single = str(insert(prediction_batches).compile(dialect=dialect))
    head, _, values = single.partition(" VALUES ")
    return f"{head} VALUES {', '.join([values] * rows)}"


def _yield_cpu() -> None:
    """Let the threads that answer requests run before the next statement (POSIX)."""
    if hasattr(os, "sched_yield"):
        os.sched_yield()


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


class PredictionLogWriter:
    """Bounded queue plus one writer thread; drops (and counts) rather than blocking callers.

    Accounting is exact: every enqueued prediction is counted once, as ``written`` or as
    dropped with a reason (``on_drop``), including the rows being written when the writer is
    closed and rows enqueued after that.
    """

    def __init__(
        self,
        engine: Engine,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        on_drop: DropCallback | None = None,
        max_backoff: float = 10.0,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    ) -> None:
        self.engine = engine
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.write_timeout = write_timeout
        self.on_drop = on_drop or (lambda reason, n: None)
        self._queue: deque[PredictionBatch] = deque()
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._closed = False  # set under _lock: nothing is queued any more
        self._deadline = math.inf  # monotonic time after which no write starts (set by close)
        self._in_flight: list[PredictionBatch] = []  # taken by the thread, not yet settled
        self._abandoned = False  # close gave up on the thread and counted its rows dropped
        self._backoff = _Backoff(maximum=max_backoff)
        self._pending: dict[str, int] = {}  # batch id -> rows, queued or being written
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped: dict[str, int] = {}  # reason -> rows
        self.healthy = True
        self.last_error: str | None = None
        self._last_drop_log = 0.0
        self._tables_ready = False

    # ------------------------------------------------------------------ caller side

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def enqueue(self, batch: PredictionBatch) -> bool:
        """Queue a batch for writing; False (and counted as dropped) when the queue is full
        or the writer is closed."""
        n = len(batch)
        reason = None
        with self._lock:
            if self._closed:
                reason = "shutdown"
            elif self._queued_rows + n > self.queue_size:
                reason = "queue_full"
            else:
                self._queue.append(batch)
                self._queued_rows += n
                self._pending[batch.batch_id] = n
        if reason is not None:
            self._dropped(reason, n)
            return False
        if self._queued_rows >= self.batch_size:
            self._wake.set()
        return True

    def is_pending(self, prediction_id: str) -> bool:
        """True while a prediction is queued here but not yet written."""
        where = split_prediction_id(prediction_id)
        return where is not None and where[1] < self._pending.get(where[0], 0)

    @property
    def queued(self) -> int:
        return self._queued_rows

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued for up to `timeout` seconds (default: the write timeout),
        then stop; whatever is not written by then is counted as dropped ("shutdown").

        No write starts after the deadline and a started one ends within the write timeout,
        so the wait here is at most ``timeout + write_timeout`` (plus a second of slack).
        """
        budget = self.write_timeout if timeout is None else timeout
        self._deadline = time.monotonic() + budget
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(budget + self.write_timeout + 1.0)
        with self._lock:
            self._closed = True
            left = self._queued_rows
            self._queue.clear()
            self._queued_rows = 0
            self._pending.clear()
            if self._thread is not None and self._thread.is_alive() and self._in_flight:
                # The store hangs past its own timeout: count the rows as lost rather than
                # wait longer; should the write still commit, they are both (logged).
                self._abandoned = True
                left += _rows(self._in_flight)
                logger.error(
                    "prediction log write still running at shutdown after %.1fs; its %d "
                    "record(s) are counted as dropped",
                    budget + self.write_timeout + 1.0,
                    _rows(self._in_flight),
                )
        if left:
            self._dropped("shutdown", left)
        logger.info(
            "prediction log closed: %d written, dropped %s",
            self.written,
            self.dropped or "none",
            extra={"written": self.written, "dropped": dict(self.dropped)},
        )

    # ------------------------------------------------------------------ writer thread

    def _dropped(self, reason: str, n: int) -> None:
        with self._lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + n
        self.on_drop(reason, n)
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0 or reason == "shutdown":
            self._last_drop_log = now  # one line per 10 s, not one per request
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
            self._in_flight = taken
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
        """Everything taken, in one transaction: one row per request."""
        if not self._tables_ready:
            create_tables(self.engine)
            self._tables_ready = True
        try:
            write_batches(self.engine, batches)
        except SQLAlchemyError:
            self._tables_ready = False  # the store may have been recreated: check again
            raise

    def _run(self) -> None:
        held: list[PredictionBatch] = []  # batches whose write failed and is being retried
        while True:
            if not held:
                held = self._take()
                if not held:
                    if self._stopping.is_set():
                        return
                    self._wake.wait(self.flush_interval)
                    self._wake.clear()
                    continue
            if self._stopping.is_set() and time.monotonic() >= self._deadline:
                self._give_up(held)
                return
            try:
                self._write(held)
            except SQLAlchemyError as exc:
                delay = self._backoff.failed()
                self.healthy = False
                self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                if self._stopping.is_set():
                    self._give_up(held)  # the store failed at shutdown: no time to retry
                    return
                if _is_data_error(exc):
                    self._settle(held, dropped="write_error")
                    held = []
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
            self._settle(held, dropped=None)
            held = []

    def _settle(self, batches: list[PredictionBatch], dropped: str | None) -> None:
        """Count `batches` once: written (dropped=None) or dropped for that reason."""
        with self._lock:
            self._in_flight = []
            for batch in batches:
                self._pending.pop(batch.batch_id, None)
            if self._abandoned:
                return  # close() has counted them already
            if dropped is None:
                self.written += _rows(batches)
        if dropped is not None:
            self._dropped(dropped, _rows(batches))

    def _give_up(self, held: list[PredictionBatch]) -> None:
        """Shutdown with the store failing or out of time: count `held` and everything
        still queued as dropped, and queue nothing more."""
        with self._lock:
            self._closed = True
            rest = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
        self._settle([*held, *rest], dropped="shutdown")


def _rows(batches: list[PredictionBatch]) -> int:
    return sum(len(b) for b in batches)


def _is_data_error(exc: SQLAlchemyError) -> bool:
    """Errors that retrying cannot fix (duplicate id, bad value), as opposed to outages."""
    from sqlalchemy.exc import DataError, IntegrityError

    return isinstance(exc, IntegrityError | DataError)


# ---------------------------------------------------------------------- feedback and reading


def prediction_exists(engine: Engine, prediction_id: str) -> bool:
    where = split_prediction_id(prediction_id)
    if where is None:
        return False
    batch_id, index = where
    with engine.connect() as conn:
        rows = conn.execute(
            select(prediction_batches.c.rows).where(prediction_batches.c.batch_id == batch_id)
        ).scalar()
    return rows is not None and index < rows


def record_feedback(engine: Engine, prediction_id: str, outcome: bool) -> None:
    """Store (or replace) the true outcome of a prediction."""
    where = split_prediction_id(prediction_id)
    if where is None:
        raise ValueError(f"{prediction_id!r} is not a prediction id")
    with engine.begin() as conn:
        conn.execute(delete(feedback).where(feedback.c.prediction_id == prediction_id))
        conn.execute(
            insert(feedback).values(
                prediction_id=prediction_id,
                batch_id=where[0],
                outcome=int(outcome),
                received_at=datetime.now(UTC),
            )
        )


BASE_COLUMNS = ["prediction_id", "created_at", "model_version"]
TAIL_COLUMNS = ["probability", "risk_tier", "outcome"]


def read_predictions(database_url: str, since: datetime | None = None) -> pd.DataFrame:
    """The prediction log joined with feedback: one row per prediction, one column per feature.

    Columns: prediction_id, created_at (UTC), model_version, every feature seen in the stored
    batches (in first-seen order; missing where a batch lacks it), probability, risk_tier,
    outcome (1.0/0.0, NaN without feedback). Ordered by time, then id.
    """
    engine = make_engine(database_url)
    batches_q = select(prediction_batches).order_by(
        prediction_batches.c.created_at, prediction_batches.c.batch_id
    )
    feedback_q = select(feedback.c.prediction_id, feedback.c.outcome).join(
        prediction_batches, feedback.c.batch_id == prediction_batches.c.batch_id
    )
    if since is not None:
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        batches_q = batches_q.where(prediction_batches.c.created_at >= since)
        feedback_q = feedback_q.where(prediction_batches.c.created_at >= since)
    try:
        with engine.connect() as conn:
            batches = conn.execute(batches_q).all()
            outcomes = {pid: outcome for pid, outcome in conn.execute(feedback_q)}
    except SQLAlchemyError as exc:
        if "no such table" in str(exc) or "does not exist" in str(exc):
            batches, outcomes = [], {}
        else:
            raise PredictionLogError(
                f"{engine.url.render_as_string(hide_password=True)}: cannot read the "
                f"prediction log ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            ) from None
    finally:
        engine.dispose()
    return _to_frame(batches, outcomes)


def _to_frame(batches: Sequence[Any], outcomes: Mapping[str, int]) -> pd.DataFrame:
    ids: list[str] = []
    created: list[datetime] = []
    versions: list[str] = []
    probabilities: list[float] = []
    tiers: list[str] = []
    features: dict[str, list[Any]] = {}
    for b in batches:
        n = b.rows
        ids += prediction_ids(b.batch_id, n)
        created += [_utc(b.created_at)] * n
        versions += [b.model_version] * n
        probabilities += b.probabilities
        tiers += b.risk_tiers
        for name, values in (b.features or {}).items():
            if name in BASE_COLUMNS or name in TAIL_COLUMNS:
                continue
            # a feature first seen now is missing for every earlier row
            column = features.setdefault(name, [None] * (len(ids) - n))
            column += values
        for column in features.values():
            if len(column) < len(ids):  # a feature this batch lacks
                column += [None] * (len(ids) - len(column))
    base = pd.DataFrame(
        {
            "prediction_id": ids,
            "created_at": pd.to_datetime(created, utc=True),
            "model_version": versions,
        }
    )
    tail = pd.DataFrame(
        {
            "probability": np.asarray(probabilities, dtype=float),
            "risk_tier": tiers,
            "outcome": np.asarray([outcomes.get(i, np.nan) for i in ids], dtype=float),
        }
    )
    # pandas infers each column: numbers with gaps become float with NaN, text stays object
    middle = pd.DataFrame({name: pd.Series(values) for name, values in features.items()})
    return pd.concat([base, middle], axis=1).join(tail) if len(middle.columns) else base.join(tail)


def _utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes (stored as UTC); PostgreSQL returns aware ones."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
