"""JSON logs, one event per line, each carrying the request id of the request being served.

The request id lives in a contextvar set by the middleware, so any log call made while a
request is handled (service, handlers, library code) is tagged without passing it around.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any, TextIO, cast

from app.loopflush import defer, flush_at_exit

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id and extras."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            event["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                event[key] = value
        if record.exc_info:
            event["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str, separators=(",", ":"))


# (second, its ISO text): formatted once a second rather than once a line.
_last_second: tuple[int, str] = (-1, "")


def _iso(created: float) -> str:
    global _last_second
    second = int(created)
    cached = _last_second
    if cached[0] != second:
        cached = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int(created % 1 * 1000):03d}Z"


class _CurrentStdout:
    """Whatever ``sys.stdout`` is at write time (a test harness may swap it between apps)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


class LoopBatchingHandler(logging.StreamHandler):
    """A StreamHandler that writes the lines of one event-loop iteration with one write.

    Each write to stdout is a system call that releases the GIL; under load, one per access
    line let the inference or prediction-log thread take the GIL, and the loop then waited to
    get it back. Lines logged on a running loop are joined and written at the end of the
    current iteration (app.loopflush); lines from other threads are written at once, after
    anything pending, so the order is kept. Lines still pending when the process ends are
    written by the flusher's exit hooks (the last lines of a worker are not lost).
    """

    terminator = "\n"

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._add(line)

    def write_line(self, line: str) -> None:
        """A line formatted by the caller, under the handler's lock like any record."""
        self.acquire()
        try:
            self._add(line)
        finally:
            self.release()

    def _add(self, line: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._pending.append(line)
        if loop is None:
            self._write_pending()
        else:
            defer(self.flush)

    def _write_pending(self) -> None:
        if self._pending:
            text = self.terminator.join(self._pending) + self.terminator
            self._pending.clear()
            try:
                self.stream.write(text)
                super().flush()
            except (OSError, ValueError):  # stdout closed or gone: a log line never raises
                pass

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_pending()
        finally:
            self.release()


def _direct_handler(logger: logging.Logger, level: int) -> LoopBatchingHandler | None:
    """The app's JSON handler when it is the only place `logger`'s lines go, with nothing
    (filters, other handlers) that a hand-built line would skip; else None."""
    if logger.handlers or logger.filters or not logger.propagate:
        return None
    parent = logger.parent
    while parent is not None and not parent.handlers:
        if parent.filters or not parent.propagate:
            return None
        parent = parent.parent
    if parent is None or parent.filters or parent.parent is not None:
        return None  # only the root's handler: a handler in between might format otherwise
    handlers = parent.handlers
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    if (
        type(handler) is not LoopBatchingHandler
        or type(handler.formatter) is not JsonFormatter
        or handler.filters
        or level < handler.level
    ):
        return None
    return handler


class StructuredLogger:
    """Lines with fixed fields for a hot path (the access log), written exactly as
    JsonFormatter would write them, without building a LogRecord when the app's JSON handler
    is where they go; through logging as usual otherwise (tests, other configurations)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def enabled(self, level: int) -> bool:
        return self.logger.isEnabledFor(level)

    def log(self, level: int, message: str, fields: dict[str, Any]) -> None:
        """One line: time, level, logger, message, request_id (from the context), `fields`."""
        handler = _direct_handler(self.logger, level)
        if handler is None:
            log = self.logger
            log.handle(
                log.makeRecord(log.name, level, __file__, 0, message, (), None, extra=fields)
            )
            return
        event: dict[str, Any] = {
            "time": _iso(time.time()),
            "level": logging.getLevelName(level),
            "logger": self.logger.name,
            "message": message,
        }
        request_id = request_id_var.get()
        if request_id is not None:
            event["request_id"] = request_id
        event.update(fields)
        handler.write_line(json.dumps(event, default=str, separators=(",", ":")))


def configure_logging(level: str) -> None:
    """Route the root, app and uvicorn loggers through one JSON handler on stdout."""
    handler = LoopBatchingHandler(cast(TextIO, _CurrentStdout()))
    handler.setFormatter(JsonFormatter())
    flush_at_exit()  # uvicorn's last lines ("Finished server process") come after the loop
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        log = logging.getLogger(name)
        log.handlers[:] = []
        log.propagate = True
    # The middleware writes one access line per request; uvicorn's own would be a duplicate.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    access.disabled = True
