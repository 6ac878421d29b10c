"""A crash-safe hand-off to the log writer: each worker's append-only spool file.

The writer's queue lives in memory, so a worker killed outright (SIGKILL from the OOM killer,
a liveness probe or an operator) used to take with it the predictions it had answered but
not yet written, uncounted. Now, before an answer is sent, its batch is copied into the
worker's spool, a file mapped into memory (``MAP_SHARED``): the copy is the page cache, which
outlives a killed process, and it is a memcpy, not a system call. A ``write`` per request
would release the GIL on the event loop, and getting it back from the inference or writer
thread cost a quarter of the single-prediction throughput (bench/asgi_timing.py); the
mapped copy costs nothing measurable. No fsync: a machine crash or power cut may lose what
the kernel had not written back, which is out of scope. Segments are allocated in full when
created (``posix_fallocate``), so a full disk is an error at that moment, never a SIGBUS on
a later copy.

The writer thread records how far the spool is settled (written to the store or counted
dropped) in a small ``done`` file and deletes settled segments. A live worker adopts the
spools of dead ones, at start-up and periodically, writes what they had not settled
(duplicates ignored: a batch id is a primary key) and deletes them.

Files in the spool directory, per worker incarnation ``<pid>-<random>`` (a pid may be reused
by a later process, the random part is not):

- ``<name>.done``: 34 bytes, ``"<segment> <offset>\\n"``, everything before that position is
  settled. The owner holds an exclusive ``flock`` on it for its lifetime; the kernel drops
  the lock when the process dies, however it dies, which is how an adopter tells a dead
  owner from a live one (a pid check alone would be fooled by pid reuse).
- ``<name>.<segment>.spool``: ``segment_bytes`` long, one JSON line per batch from the
  start, zeros after the last (JSON never holds a raw NUL). A record that does not fit starts
  the next segment; settled segments are deleted.

A record cut short (the process killed in the middle of its copy) was never answered: the
answer is sent after the copy. Such a torn last record (no newline before the zeros, or not
valid JSON) is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pydantic_core import from_json, to_json
from sqlalchemy import Engine, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from churn.prediction_log.schema import prediction_batches, shadow_predictions

logger = logging.getLogger("churn.prediction_log")

SEGMENT_BYTES = 8 * 1024 * 1024  # allocated per worker; far more than its queue holds
_DONE_BYTES = 34  # "%016d %016d\n"
_NAME = re.compile(r"^(\d+)-([0-9a-f]{8})$")


class SpoolPosition(NamedTuple):
    """A place in a worker's spool: segment number, then byte offset (ordered as written)."""

    segment: int
    offset: int


def encode_record(
    batch_id: str,
    created_at: float,
    model_version: str,
    features: bytes,
    probabilities: bytes,
    tiers: bytes,
) -> bytes:
    """One spool line from a batch's fields, the three columns already JSON."""
    return b"".join(
        (
            b'{"batch_id":',
            to_json(batch_id),
            b',"created_at":',
            to_json(created_at),
            b',"model_version":',
            to_json(model_version),
            b',"features":',
            features,
            b',"probabilities":',
            probabilities,
            b',"risk_tiers":',
            tiers,
            b"}\n",
        )
    )


def encode_shadow_record(
    batch_id: str,
    created_at: float,
    model_version: str,
    served_version: str,
    probabilities: bytes,
    tiers: bytes,
) -> bytes:
    """One spool line for a shadow score (``shadow_predictions``): told apart from a served
    batch by its ``served_version`` (and it has no features: the served batch holds them)."""
    return b"".join(
        (
            b'{"batch_id":',
            to_json(batch_id),
            b',"created_at":',
            to_json(created_at),
            b',"model_version":',
            to_json(model_version),
            b',"served_version":',
            to_json(served_version),
            b',"probabilities":',
            probabilities,
            b',"risk_tiers":',
            tiers,
            b"}\n",
        )
    )


def is_shadow(record: dict[str, Any]) -> bool:
    """Whether a decoded spool record is a shadow score (else a served batch)."""
    return "served_version" in record


def decode_record(line: bytes) -> dict[str, Any]:
    """The fields of one spool line; ValueError when it is not a whole, well-formed record
    (a torn copy, or a file that is not a spool)."""
    try:
        value = from_json(line)
    except ValueError as exc:
        raise ValueError(f"not a spool record ({exc})") from None
    if not (
        isinstance(value, dict)
        and isinstance(value.get("batch_id"), str)
        and isinstance(value.get("created_at"), int | float)
        and isinstance(value.get("model_version"), str)
        and (
            isinstance(value.get("served_version"), str)
            if is_shadow(value)
            else isinstance(value.get("features"), dict)
        )
        and isinstance(value.get("probabilities"), list)
        and isinstance(value.get("risk_tiers"), list)
        and len(value["probabilities"]) == len(value["risk_tiers"]) > 0
    ):
        raise ValueError("not a spool record")
    return value


class Spool:
    """This process's spool: append before answering, mark settled after writing.

    Thread-safe: the event loop appends while the writer thread marks. Errors are OSError;
    the caller decides (the writer logs them and carries on without the spool for that
    batch: the prediction is still queued in memory).
    """

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.name = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._lock = threading.Lock()
        self._closed = False
        # Published (renamed into place) only once locked, so no adopter ever sees it unlocked.
        tmp = directory / f".{self.name}.done.tmp"
        self._done_fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._done_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._write_done(SpoolPosition(0, 0))
        os.rename(tmp, self._done_path)
        self._segment = 0
        self._oldest = 0  # the oldest segment file still on disk
        self._size = 0
        self._map = self._open_segment(0, segment_bytes)

    @property
    def _done_path(self) -> Path:
        return self.directory / f"{self.name}.done"

    def _segment_path(self, segment: int) -> Path:
        return self.directory / f"{self.name}.{segment}.spool"

    def _open_segment(self, segment: int, capacity: int) -> mmap.mmap:
        path = self._segment_path(segment)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, capacity)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise  # ENOSPC: no room for the spool, said now rather than as SIGBUS
                os.ftruncate(fd, capacity)  # no fallocate here (rare): sparse
            return mmap.mmap(fd, capacity, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise
        finally:
            os.close(fd)  # the mapping keeps the file

    def _write_done(self, position: SpoolPosition) -> None:
        # One small pwrite in place: a killed process leaves the old or the new value.
        text = f"{position.segment:016d} {position.offset:016d}\n".encode()
        os.pwrite(self._done_fd, text, 0)

    def append(self, record: bytes) -> SpoolPosition:
        """Copy one record in (no system call unless a new segment is due); the position
        just past it."""
        with self._lock:
            if self._closed:
                raise OSError(errno.EBADF, "the spool is closed")
            end = self._size + len(record)
            if end >= len(self._map):  # keep one zero after the last record
                fresh = self._open_segment(
                    self._segment + 1, max(self.segment_bytes, len(record) + 1)
                )
                self._map.close()
                self._map, self._segment, self._size = fresh, self._segment + 1, 0
                end = len(record)
            self._map[self._size : end] = record
            self._size = end
            return SpoolPosition(self._segment, end)

    def settled(self, upto: SpoolPosition) -> None:
        """Everything before `upto` is written or counted: record it and delete the
        segments before it."""
        with self._lock:
            if self._closed:
                return
            self._write_done(upto)
            while self._oldest < upto.segment:
                with contextlib.suppress(FileNotFoundError):
                    self._segment_path(self._oldest).unlink()
                self._oldest += 1

    def close(self) -> None:
        """Remove this spool (call once every record is settled: written or counted)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._map.close()
            for segment in range(self._oldest, self._segment + 1):
                with contextlib.suppress(FileNotFoundError):
                    self._segment_path(segment).unlink()
            with contextlib.suppress(FileNotFoundError):
                self._done_path.unlink()
            os.close(self._done_fd)  # releases the lock last


@dataclass
class Orphan:
    """A dead worker's spool, locked by the adopter until released or kept."""

    name: str
    records: list[dict[str, Any]]
    torn: int  # lines that were not whole records (skipped)
    _fd: int
    _paths: list[Path] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return int(self.name.split("-")[0])

    @property
    def predictions(self) -> int:
        """Served predictions (shadow scores are counted by `shadow_scores`)."""
        return sum(len(r["probabilities"]) for r in self.records if not is_shadow(r))

    @property
    def shadow_scores(self) -> int:
        return sum(len(r["probabilities"]) for r in self.records if is_shadow(r))

    def release(self) -> None:
        """Its records are in the store (or counted): delete the spool, then unlock."""
        for path in self._paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        os.close(self._fd)

    def keep(self) -> None:
        """Leave it for a later attempt (the store is unavailable)."""
        os.close(self._fd)


def orphans(directory: Path, own: str | None = None) -> Iterator[Orphan]:
    """The spools in `directory` whose owner is dead, each locked while the caller holds it
    (another adopter skips it). The caller must release or keep every one it is given."""
    for done in sorted(directory.glob("*.done")):
        name = done.name.removesuffix(".done")
        if name == own or not _NAME.match(name):
            continue
        orphan = _claim(directory, name, done)
        if orphan is not None:
            yield orphan


def _claim(directory: Path, name: str, done: Path) -> Orphan | None:
    try:
        fd = os.open(done, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # adopted meanwhile
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None  # its owner lives (or another worker is adopting it)
    try:
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)
            return None  # released by another adopter just before we locked it
        start = _read_done(fd)
        segments = sorted(
            (int(p.name.rsplit(".", 2)[1]), p) for p in directory.glob(f"{name}.*.spool")
        )
        records: list[dict[str, Any]] = []
        torn = 0
        for number, path in segments:
            if number < start.segment:
                continue
            offset = start.offset if number == start.segment else 0
            found, bad = _read_records(path, offset)
            records += found
            torn += bad
    except (OSError, ValueError):
        os.close(fd)
        raise
    return Orphan(name, records, torn, fd, [p for _, p in segments] + [done])


def _read_done(fd: int) -> SpoolPosition:
    text = os.pread(fd, _DONE_BYTES, 0).decode(errors="replace").split()
    try:
        return SpoolPosition(int(text[0]), int(text[1]))
    except (IndexError, ValueError):
        return SpoolPosition(0, 0)  # unreadable: adopt everything (duplicates are ignored)


def _read_records(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read().split(b"\0", 1)[0]  # the zeros after the last record
    lines = data.split(b"\n")
    torn = 1 if lines[-1] else 0  # the last copy was cut short: never answered
    records = []
    for line in lines[:-1]:
        if not line:
            continue
        try:
            records.append(decode_record(line))
        except ValueError:
            torn += 1
    return records, torn


def insert_missing(engine: Engine, records: list[dict[str, Any]]) -> None:
    """Insert spooled batches and shadow scores, skipping those already in the store (the
    dead worker may have written them and died before marking them settled)."""
    from datetime import UTC, datetime

    rows = [
        {
            "batch_id": r["batch_id"],
            "created_at": datetime.fromtimestamp(r["created_at"], UTC),
            "model_version": r["model_version"],
            "rows": len(r["probabilities"]),
            "features": r["features"],
            "probabilities": r["probabilities"],
            "risk_tiers": r["risk_tiers"],
        }
        for r in records
        if not is_shadow(r)
    ]
    shadows = [
        {
            "batch_id": r["batch_id"],
            "model_version": r["model_version"],
            "served_version": r["served_version"],
            "created_at": datetime.fromtimestamp(r["created_at"], UTC),
            "rows": len(r["probabilities"]),
            "probabilities": r["probabilities"],
            "risk_tiers": r["risk_tiers"],
        }
        for r in records
        if is_shadow(r)
    ]
    with engine.begin() as conn:
        for table, values in ((prediction_batches, rows), (shadow_predictions, shadows)):
            if values:
                _insert_new(conn, table, values)


def _insert_new(conn: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    """INSERT rows whose primary key is not in `table` yet."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        conn.execute(sqlite.insert(table).on_conflict_do_nothing(), rows)
    elif dialect == "postgresql":
        conn.execute(postgresql.insert(table).on_conflict_do_nothing(), rows)
    else:
        keys = [column.name for column in table.primary_key.columns]
        present = {
            tuple(found) for found in conn.execute(select(*(table.c[k] for k in keys))).all()
        }
        rows = [row for row in rows if tuple(row[k] for k in keys) not in present]
        if rows:
            conn.execute(insert(table), rows)
