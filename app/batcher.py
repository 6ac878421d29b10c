"""Micro-batching: one inference thread serves every request, one model call per wake-up.

Handlers on the event loop add their rows to the current loop iteration's jobs and await a
future; at the end of the iteration (app.loopflush) those jobs go to the thread in one queue
put (one wake-up, however many requests). The thread takes everything pending, runs a single
predictor call for all of it, and resolves the futures with one
``loop.call_soon_threadsafe``. The event loop never does model work (so /health
stays fast under load), there is no thread-pool hand-off per request, and under load the
per-call overhead of the model runtime is paid once for many requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any, Protocol

from app.loopflush import defer

logger = logging.getLogger("app.batcher")

# One customer's validated features by name (a dict from the request validator).
Row = Mapping[str, Any]


class ColumnRows(Sequence[Row]):
    """Validated rows held as columns (feature name -> values), as a columnar request (the
    Open Inference Protocol, app.v2) arrives: the model takes the columns as they are, so no
    per-row dict is built. Indexing gives a row, for code that wants one."""

    __slots__ = ("_count", "columns")

    def __init__(self, columns: dict[str, list[Any]], count: int) -> None:
        self.columns = columns
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        return {name: values[index] for name, values in self.columns.items()}

    def __iter__(self) -> Iterator[Row]:
        for i in range(self._count):
            yield self[i]


def columns_of(rows: Sequence[Row], names: Sequence[str]) -> dict[str, list[Any]]:
    """`rows` as columns in the order of `names` (those of a ColumnRows as they are)."""
    if isinstance(rows, ColumnRows):
        return rows.columns
    return {name: [row[name] for row in rows] for name in names}


def join_rows(parts: list[Sequence[Row]]) -> Sequence[Row]:
    """The rows of several requests as one call's rows, in order. Columnar parts stay
    columnar (their columns are concatenated; row requests beside them are transposed
    once), so a micro-batch of columnar requests never builds a dict per row."""
    if len(parts) == 1:
        return parts[0]
    columnar = [p for p in parts if isinstance(p, ColumnRows)]
    if not columnar:
        return [row for part in parts for row in part]
    names = list(columnar[0].columns)
    pieces = [columns_of(part, names) for part in parts]
    joined = {name: [v for piece in pieces for v in piece[name]] for name in names}
    return ColumnRows(joined, sum(len(part) for part in parts))


def take_rows(rows: Sequence[Row], positions: Sequence[int]) -> Sequence[Row]:
    """The rows at `positions` (in that order); columnar rows stay columnar."""
    if len(positions) == 1:
        return [rows[positions[0]]]
    take = itemgetter(*positions)
    if isinstance(rows, ColumnRows):
        return ColumnRows(
            {name: list(take(values)) for name, values in rows.columns.items()}, len(positions)
        )
    return take(rows)  # a tuple of rows


class RowPredictor(Protocol):
    """What the batcher needs from a model: answers for rows in feature order, as anything
    that slices by position (an array, app.model.Answers), one slice per request."""

    def predict_rows(self, rows: Sequence[Row]) -> Any: ...


class _Job:
    __slots__ = ("future", "loop", "model", "rows")

    def __init__(
        self,
        model: RowPredictor,
        rows: Sequence[Row],
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.model = model
        self.rows = rows
        self.future = future
        self.loop = loop


class MicroBatcher:
    """Runs predictions on a dedicated thread, batching whatever is pending at each wake-up."""

    def __init__(self, max_rows: int = 4096) -> None:
        self.max_rows = max_rows
        # Jobs of the current event-loop iteration, handed over together at its end: one
        # wake-up of the thread per iteration instead of one per request.
        self._pending: list[_Job] = []
        self._jobs: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self.calls = 0
        self.rows = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Finish pending jobs, then end the thread."""
        self._stopped = True
        self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    async def predict(self, model: RowPredictor, rows: Sequence[Row]) -> Any:
        """Probabilities for `rows` from `model`, computed on the inference thread."""
        return await self.submit(model, rows)

    def submit(self, model: RowPredictor, rows: Sequence[Row]) -> asyncio.Future[Any]:
        """`predict` without waiting: the future of `model`'s answers for `rows`. Jobs
        submitted in one event-loop iteration go to the thread together, and the jobs of one
        model among them make one call (a canary's champion rows and its paired rows)."""
        if self._stopped:
            raise RuntimeError("the inference thread is stopped (the server is shutting down)")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Job(model, rows, future, loop))
        if len(self._pending) == 1:
            defer(self._hand_over)
        return future

    def _hand_over(self) -> None:
        jobs, self._pending = self._pending, []
        self._jobs.put(jobs)

    def _drain(self, first: list[_Job]) -> tuple[list[_Job], bool]:
        """`first` and whatever else is queued, up to max_rows; True when told to stop."""
        jobs = first
        rows = sum(len(job.rows) for job in jobs)
        while rows < self.max_rows:
            try:
                more = self._jobs.get_nowait()
            except queue.Empty:
                break
            if more is None:
                return jobs, True
            jobs = [*jobs, *more]
            rows += sum(len(job.rows) for job in more)
        return jobs, False

    def _run(self) -> None:
        stopping = False
        while True:
            try:
                first = self._jobs.get(block=not stopping)
            except queue.Empty:  # stopping and everything pending is done
                return
            if first is None:
                stopping = True
                continue
            jobs, stop = self._drain(first)
            stopping = stopping or stop
            self._process(jobs)

    def _process(self, jobs: list[_Job]) -> None:
        # Jobs queued around a hot reload, or a canary's (app.service), name different
        # models: one call per model. Every answer goes back in one hand-over to the event
        # loop, after the last call: requests answered together send their next requests
        # together, so the next micro-batch stays as large (answering each model's requests
        # as soon as its call ended split the traffic into ever smaller batches).
        by_model: dict[int, list[_Job]] = {}
        for job in jobs:
            by_model.setdefault(id(job.model), []).append(job)
        results: list[tuple[_Job, Any, Exception | None]] = []
        for group in by_model.values():
            results += self._run_group(group)
        self._resolve(results)

    def _run_group(self, jobs: list[_Job]) -> list[tuple[_Job, Any, Exception | None]]:
        rows = join_rows([job.rows for job in jobs])
        try:
            answers = jobs[0].model.predict_rows(rows)
        except Exception as exc:  # the model failed: every waiting request gets the error
            logger.exception("inference failed for %d row(s)", len(rows))
            return [(job, None, exc) for job in jobs]
        self.calls += 1
        self.rows += len(rows)
        results: list[tuple[_Job, Any, Exception | None]] = []
        start = 0
        for job in jobs:
            end = start + len(job.rows)
            results.append((job, answers[start:end], None))
            start = end
        return results

    @staticmethod
    def _resolve(results: list[tuple[_Job, Any, Exception | None]]) -> None:
        by_loop: dict[int, tuple[asyncio.AbstractEventLoop, list[Any]]] = {}
        for job, value, error in results:
            by_loop.setdefault(id(job.loop), (job.loop, []))[1].append((job.future, value, error))
        for loop, items in by_loop.values():
            # A closed loop (RuntimeError) means nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_set_results, items)


def _set_results(items: list[tuple[asyncio.Future[Any], Any, Exception | None]]) -> None:
    for future, value, error in items:
        if future.done():  # the client went away and the handler was cancelled
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
