"""Writing the log off the request path: a bounded queue and one writer thread.

Enqueueing is O(1) and never blocks: when the bounded queue is full the records are dropped
and counted, so a slow or absent store never slows serving. Failed writes are retried with
exponential backoff, so writing resumes by itself when the store is back. Every enqueued
prediction ends exactly once as written or as dropped with a reason, the batch being written
at shutdown included: one timeout (``write_timeout``) bounds both a statement (SQLite's busy
wait, PostgreSQL's statement_timeout) and the shutdown wait.
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
from typing import Any, ClassVar, TypeVar

from pydantic_core import PydanticSerializationError, to_json
from sqlalchemy import Engine, Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import SQLAlchemyError

from churn.prediction_log.ids import prediction_ids, split_prediction_id
from churn.prediction_log.schema import (
    DEFAULT_WRITE_TIMEOUT,
    create_tables,
    prediction_batches,
    shadow_predictions,
)
from churn.prediction_log.spool import (
    Spool,
    SpoolPosition,
    encode_record,
    encode_shadow_record,
    insert_missing,
    orphans,
)

logger = logging.getLogger("churn.prediction_log")

DropCallback = Callable[[str, int], None]

ADOPT_INTERVAL = 5.0  # seconds between looks for dead workers' spools


@dataclass
class PredictionBatch:
    """The predictions of one request, as columns (one row of ``prediction_batches``)."""

    batch_id: str
    created_at: float  # Unix time
    model_version: str
    columns: Mapping[str, Sequence[Any]]
    probabilities: Sequence[float]
    tiers: Sequence[str]
    _json: tuple[bytes, bytes, bytes] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    shadow: ClassVar[bool] = False

    def __len__(self) -> int:
        return len(self.probabilities)

    @property
    def key(self) -> str:
        """What identifies it in the writer's queue (the batch id)."""
        return self.batch_id

    def json_columns(self) -> tuple[bytes, bytes, bytes]:
        """Features, probabilities and risk tiers as JSON, encoded once: the spool line and
        the SQLite insert share them. NaN and infinities become null, as in the store."""
        if self._json is None:
            try:  # lists (what Answers holds) as they are: this runs before each answer
                self._json = (_json(self.columns), _json(self.probabilities), _json(self.tiers))
            except PydanticSerializationError:  # e.g. numpy arrays
                columns = {name: list(values) for name, values in self.columns.items()}
                self._json = (
                    _json(columns),
                    _json(list(self.probabilities)),
                    _json(list(self.tiers)),
                )
        return self._json

    def spool_record(self) -> bytes:
        """The batch as one spool line (churn.prediction_log.spool)."""
        features, probabilities, tiers = self.json_columns()
        return encode_record(
            self.batch_id, self.created_at, self.model_version, features, probabilities, tiers
        )

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


@dataclass
class ShadowBatch:
    """What a model that did not answer said about a served batch: one row of
    ``shadow_predictions`` (progressive delivery, churn/rollout.py). Row i pairs with row i of
    the served batch of the same ``batch_id`` (same prediction id, same feedback)."""

    batch_id: str  # the served batch's
    created_at: float  # Unix time
    model_version: str  # the version that scored without answering
    served_version: str  # the version that answered
    probabilities: Sequence[float]
    tiers: Sequence[str]

    _json: tuple[bytes, bytes] | None = field(default=None, init=False, repr=False, compare=False)

    shadow: ClassVar[bool] = True

    def __len__(self) -> int:
        return len(self.probabilities)

    @property
    def key(self) -> str:
        """Its queue key: never a served batch's (is_pending answers for served ones only)."""
        return f"{self.batch_id}/{self.model_version}"

    def json_columns(self) -> tuple[bytes, bytes]:
        """Probabilities and risk tiers as JSON, encoded once (spool line and insert)."""
        if self._json is None:
            self._json = (_json(list(self.probabilities)), _json(list(self.tiers)))
        return self._json

    def spool_record(self) -> bytes:
        probabilities, tiers = self.json_columns()
        return encode_shadow_record(
            self.batch_id,
            self.created_at,
            self.model_version,
            self.served_version,
            probabilities,
            tiers,
        )

    def record(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "model_version": self.model_version,
            "served_version": self.served_version,
            "created_at": datetime.fromtimestamp(self.created_at, UTC),
            "rows": len(self),
            "probabilities": list(self.probabilities),
            "risk_tiers": list(self.tiers),
        }


LogBatch = PredictionBatch | ShadowBatch


def write_log(engine: Engine, batches: Sequence[LogBatch]) -> None:
    """Insert served batches and shadow scores in one transaction (what the writer thread
    does): a retry after a failure never finds half of them written."""
    served = [b for b in batches if not b.shadow]
    shadows = [b for b in batches if b.shadow]
    with engine.begin() as conn:
        if served:
            _insert_batches(conn, served)  # type: ignore[arg-type]
        if shadows:
            _insert_shadows(conn, shadows)  # type: ignore[arg-type]


def _insert_shadows(conn: Any, shadows: Sequence[ShadowBatch]) -> None:
    """Insert shadow scores on an open transaction: SQLite through the same multi-row
    statements as served batches (a shadow row per served request must not cost more than
    the request's own), other stores through SQLAlchemy Core."""
    dialect = conn.dialect
    if dialect.paramstyle != "qmark":
        conn.execute(insert(shadow_predictions), [s.record() for s in shadows])
        return
    stamp = shadow_predictions.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
    for group in _statement_groups(shadows):
        values: list[Any] = []
        for shadow in group:
            created = datetime.fromtimestamp(shadow.created_at, UTC)
            probabilities, tiers = shadow.json_columns()
            values += (
                shadow.batch_id,
                shadow.model_version,
                shadow.served_version,
                stamp(created) if stamp is not None else created,
                len(shadow),
                probabilities.decode(),
                tiers.decode(),
            )
        conn.exec_driver_sql(
            _multi_row_insert(dialect, len(group), shadow_predictions), tuple(values)
        )
        _yield_cpu()


def write_batches(engine: Engine, batches: Sequence[PredictionBatch]) -> None:
    """Insert batches in one transaction."""
    with engine.begin() as conn:
        _insert_batches(conn, batches)


def _insert_batches(conn: Any, batches: Sequence[PredictionBatch]) -> None:
    """Insert served batches on an open transaction.

    SQLite gets multi-row INSERTs of a few rows each, with a yield of the CPU after each:
    the sqlite3 driver's executemany releases and retakes the GIL for every row, and at a
    few thousand single-prediction requests a second each release let this thread hold up
    the event loop (the /predict p95 and p99 doubled). Other stores go through SQLAlchemy
    Core, whose multi-row VALUES is what makes PostgreSQL fast.
    """
    dialect = conn.dialect
    if dialect.paramstyle != "qmark":
        conn.execute(insert(prediction_batches), [b.record() for b in batches])
        return
    stamp = prediction_batches.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
    for group in _statement_groups(batches):
        values: list[Any] = []
        for batch in group:
            created = datetime.fromtimestamp(batch.created_at, UTC)
            features, probabilities, tiers = batch.json_columns()
            values += (
                batch.batch_id,
                stamp(created) if stamp is not None else created,
                batch.model_version,
                len(batch),
                features.decode(),
                probabilities.decode(),
                tiers.decode(),
            )
        conn.exec_driver_sql(_multi_row_insert(dialect, len(group)), tuple(values))
        _yield_cpu()


_Batch = TypeVar("_Batch", "PredictionBatch", "ShadowBatch")

# 7 columns x 25 rows = 175 parameters, under SQLite's oldest limit of 999. SQLite runs a
# statement without the GIL; a statement also stops at ten thousand predictions (ten
# 1,000-row requests, about a megabyte of JSON), so it stays short, while each statement
# costs this thread a turn at the GIL: one per 1,000-row request held the log near 200
# requests a second on a busy core.
ROWS_PER_STATEMENT = 25
PREDICTIONS_PER_STATEMENT = 10_000


def _statement_groups(batches: Sequence[_Batch]) -> Iterator[list[_Batch]]:
    group: list[_Batch] = []
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
def _multi_row_insert(dialect: Dialect, rows: int, table: Table = prediction_batches) -> str:
    """INSERT INTO <table> (...) VALUES (?, ...), (?, ...), ... for `rows` rows."""
    single = str(insert(table).compile(dialect=dialect))
    head, _, values = single.partition(" VALUES ")
    return f"{head} VALUES {', '.join([values] * rows)}"


def _json(value: Any) -> bytes:
    """JSON in Rust (pydantic-core), as the engines' json_serializer writes it."""
    return to_json(value, inf_nan_mode="null")


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
    closed and rows enqueued after that. With a ``spool`` (churn.prediction_log.spool) that
    holds for a process killed outright too: each queued batch is also in the spool before
    ``enqueue`` returns, and the thread adopts the spools of dead workers.
    """

    def __init__(
        self,
        engine: Engine,
        queue_size: int = 50_000,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        on_drop: DropCallback | None = None,
        max_backoff: float = 10.0,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        spool: Spool | None = None,
        adopt_interval: float = ADOPT_INTERVAL,
        shadow_queue_size: int | None = None,
        on_shadow_drop: DropCallback | None = None,
    ) -> None:
        self.engine = engine
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.write_timeout = write_timeout
        self.on_drop = on_drop or (lambda reason, n: None)
        # Shadow scores (ShadowBatch) share the queue and the thread but have their own bound
        # and drop count: they never take a served prediction's place.
        self.shadow_queue_size = queue_size if shadow_queue_size is None else shadow_queue_size
        self.on_shadow_drop = on_shadow_drop or (lambda reason, n: None)
        self._queue: deque[LogBatch] = deque()
        self._queued_rows = 0
        self._queued_shadow = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._closed = False  # set under _lock: nothing is queued any more
        self._deadline = math.inf  # monotonic time after which no write starts (set by close)
        self._in_flight: list[LogBatch] = []  # taken by the thread, not yet settled
        self._abandoned = False  # close gave up on the thread and counted its rows dropped
        self._backoff = _Backoff(maximum=max_backoff)
        self._pending: dict[str, int] = {}  # batch id -> rows, queued or being written
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped: dict[str, int] = {}  # reason -> rows
        self.shadow_written = 0
        self.shadow_dropped: dict[str, int] = {}  # reason -> shadow rows
        self.healthy = True
        self.last_error: str | None = None
        self._last_drop_log = 0.0
        self._tables_ready = False
        # Crash safety (churn.prediction_log.spool): each queued batch is in the spool too.
        self.spool = spool
        self.adopt_interval = adopt_interval
        self._spooled: dict[str, SpoolPosition] = {}  # batch id -> spool position past it
        self._last_spool_error_log = -math.inf
        self.recovered = 0  # predictions of dead workers' spools written here

    # ------------------------------------------------------------------ caller side

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def enqueue(self, batch: LogBatch) -> bool:
        """Queue a batch (or a shadow score) for writing; False (and counted as dropped) when
        its queue is full or the writer is closed. Thread-safe."""
        n = len(batch)
        reason = None
        with self._lock:
            if self._closed:
                reason = "shutdown"
            elif (
                self._queued_shadow + n > self.shadow_queue_size
                if batch.shadow
                else self._queued_rows + n > self.queue_size
            ):
                reason = "queue_full"
            else:
                if self.spool is not None:
                    self._spool_append(batch)
                self._queue.append(batch)
                if batch.shadow:
                    self._queued_shadow += n
                else:
                    self._queued_rows += n
                self._pending[batch.key] = n
        if reason is not None:
            self._count_drops(reason, [batch])
            return False
        if self._queued_rows + self._queued_shadow >= self.batch_size:
            self._wake.set()
        return True

    def _spool_append(self, batch: LogBatch) -> None:
        """Hand the batch to the spool before its answer is sent (called under the lock, so
        the spool's order is the queue's). A failure leaves the batch in memory only: it is
        still written or counted unless this process is killed, so serving carries on."""
        assert self.spool is not None
        try:
            self._spooled[batch.key] = self.spool.append(batch.spool_record())
        except OSError as exc:
            now = time.monotonic()
            if now - self._last_spool_error_log >= 10.0:
                self._last_spool_error_log = now
                logger.error(
                    "prediction log spool write failed (%s): predictions are still written "
                    "from memory, but a killed worker would lose them uncounted",
                    exc,
                    extra={"spool_dir": str(self.spool.directory)},
                )

    def is_pending(self, prediction_id: str) -> bool:
        """True while a prediction is queued here but not yet written."""
        where = split_prediction_id(prediction_id)
        return where is not None and where[1] < self._pending.get(where[0], 0)

    @property
    def queued(self) -> int:
        return self._queued_rows

    def idle(self) -> bool:
        """Nothing queued and no write in flight (every batch so far written or counted)."""
        with self._lock:
            return not self._queue and not self._in_flight

    def write_now(self) -> None:
        """Start a write of whatever is queued without waiting for the flush interval (a
        caller that needs the log settled now: a benchmark window's end, say)."""
        self._wake.set()

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
            left = list(self._queue)
            self._queue.clear()
            self._queued_rows = self._queued_shadow = 0
            self._pending.clear()
            self._spooled.clear()
            if self._thread is not None and self._thread.is_alive() and self._in_flight:
                # The store hangs past its own timeout: count the rows as lost rather than
                # wait longer; should the write still commit, they are both (logged).
                self._abandoned = True
                left += self._in_flight
                logger.error(
                    "prediction log write still running at shutdown after %.1fs; its %d "
                    "record(s) are counted as dropped",
                    budget + self.write_timeout + 1.0,
                    _rows(self._in_flight),
                )
        if left:
            self._count_drops("shutdown", left)
        if self.spool is not None:
            self._spool_call(self.spool.close)  # every record is written or counted now
        logger.info(
            "prediction log closed: %d written, dropped %s",
            self.written,
            self.dropped or "none",
            extra={"written": self.written, "dropped": dict(self.dropped)},
        )

    # ------------------------------------------------------------------ writer thread

    def _count_drops(self, reason: str, batches: list[LogBatch]) -> None:
        """Count dropped served predictions and shadow scores, each on its own counter."""
        served = sum(len(b) for b in batches if not b.shadow)
        shadow = sum(len(b) for b in batches if b.shadow)
        if shadow:
            with self._lock:
                self.shadow_dropped[reason] = self.shadow_dropped.get(reason, 0) + shadow
            self.on_shadow_drop(reason, shadow)
        if served:
            self._dropped(reason, served)

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

    def _take(self) -> list[LogBatch]:
        """Everything queued, for one write (the queue bounds it). A write costs this thread a
        few turns at the GIL whatever its size, and on a busy core each turn can wait a
        switch interval: at one request per write (a 1,000-row request is over batch_size
        alone) the log fell behind 1,000-row requests from about 125,000 predictions/s and
        dropped the rest."""
        with self._lock:
            taken = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
            self._queued_shadow = 0
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

    def _write(self, batches: list[LogBatch]) -> None:
        """Everything taken, in one transaction: one row per request (and per shadow score)."""
        self._store(write_log, batches)

    def _store(self, write: Callable[[Engine, Any], None], what: Any) -> None:
        if not self._tables_ready:
            create_tables(self.engine)
            self._tables_ready = True
        try:
            write(self.engine, what)
        except SQLAlchemyError:
            self._tables_ready = False  # the store may have been recreated: check again
            raise

    def adopt(self) -> int:
        """Write the unsettled records of dead workers' spools to the store, then delete
        the spools; the predictions written. A store that fails leaves them for the next
        try; a record the store refuses (bad data) is counted dropped, as the writer would.
        Never raises."""
        if self.spool is None:
            return 0
        adopted = 0
        try:
            for orphan in orphans(self.spool.directory, own=self.spool.name):
                if orphan.torn:
                    logger.warning(
                        "spool of dead worker %d: %d torn record(s) skipped (cut short by "
                        "the kill, so never answered)",
                        orphan.pid,
                        orphan.torn,
                    )
                try:
                    if orphan.records:
                        self._store(insert_missing, orphan.records)
                except SQLAlchemyError as exc:
                    if not _is_data_error(exc):
                        orphan.keep()
                        logger.warning(
                            "spool of dead worker %d not adopted yet (store unavailable: %s)",
                            orphan.pid,
                            f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                        )
                        return adopted
                    self._dropped("write_error", orphan.predictions)
                    if orphan.shadow_scores:
                        self.on_shadow_drop("write_error", orphan.shadow_scores)
                    orphan.release()
                    continue
                except Exception:
                    orphan.keep()  # unlocked, for a later try (logged below)
                    raise
                orphan.release()
                adopted += orphan.predictions
                with self._lock:
                    self.recovered += orphan.predictions
                if orphan.predictions:
                    logger.warning(
                        "adopted the spool of dead worker %d: %d prediction(s) it had "
                        "answered but not written are now in the log",
                        orphan.pid,
                        orphan.predictions,
                        extra={"dead_pid": orphan.pid, "recovered": orphan.predictions},
                    )
        except Exception as exc:  # never end the writer thread; the spool stays for later
            logger.error("adopting dead workers' spools failed: %s: %s", type(exc).__name__, exc)
        return adopted

    def _spool_call(self, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except OSError as exc:
            logger.error("prediction log spool: %s", exc)

    def _run(self) -> None:
        held: list[LogBatch] = []  # batches whose write failed and is being retried
        next_adoption = time.monotonic()  # at start, then every adopt_interval
        while True:
            if self.spool is not None and not held and time.monotonic() >= next_adoption:
                self.adopt()
                next_adoption = time.monotonic() + self.adopt_interval
            if not held:
                held = self._take()
                if not held:
                    if self._stopping.is_set():
                        if self.spool is not None and time.monotonic() < self._deadline:
                            self.adopt()  # a last look: a worker killed during this run
                        return
                    wait = self.flush_interval
                    if self.spool is not None:  # not past the next look for dead spools
                        wait = min(wait, max(0.0, next_adoption - time.monotonic()))
                    self._wake.wait(wait)
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

    def _settle(self, batches: list[LogBatch], dropped: str | None) -> None:
        """Count `batches` once: written (dropped=None) or dropped for that reason."""
        with self._lock:
            self._in_flight = []
            marks = []
            for batch in batches:
                self._pending.pop(batch.key, None)
                mark = self._spooled.pop(batch.key, None)
                if mark is not None:
                    marks.append(mark)
            if self._abandoned:
                return  # close() has counted them already
            if dropped is None:
                self.written += sum(len(b) for b in batches if not b.shadow)
                self.shadow_written += sum(len(b) for b in batches if b.shadow)
        if dropped is not None:
            self._count_drops(dropped, batches)
        # After counting: a kill in between leaves them to an adopter, which ignores what
        # was written; settled before counting, they could vanish.
        if marks and self.spool is not None:
            self._spool_call(self.spool.settled, max(marks))

    def _give_up(self, held: list[LogBatch]) -> None:
        """Shutdown with the store failing or out of time: count `held` and everything
        still queued as dropped, and queue nothing more."""
        with self._lock:
            self._closed = True
            rest = list(self._queue)
            self._queue.clear()
            self._queued_rows = self._queued_shadow = 0
        self._settle([*held, *rest], dropped="shutdown")


def _rows(batches: list[LogBatch]) -> int:
    return sum(len(b) for b in batches)


def _is_data_error(exc: SQLAlchemyError) -> bool:
    """Errors that retrying cannot fix (duplicate id, bad value), as opposed to outages."""
    from sqlalchemy.exc import DataError, IntegrityError

    return isinstance(exc, IntegrityError | DataError)
