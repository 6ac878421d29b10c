"""Serving a challenger beside the champion: shadow scoring, canary routing, guardrails.

The registry holds the rollout (churn/rollout.py): ``@production`` is the champion,
``@challenger`` the version being rolled out, and its record says the stage and the canary
share. Every worker follows it on the watcher's tick (app.watcher) and keeps here, per worker:

- the challenger as a verified ``ServedModel`` (the same bundle checks and backend choice as
  the champion), loaded once per version; a record change (shadow -> canary, a new share)
  applies without loading anything. A version whose feature schema differs from the
  champion's is refused (logged, ``challenger_refused_total{reason="schema_mismatch"}``), and
  so is a bundle that fails verification (``bad_bundle``) or a challenger without a readable
  record (``no_record``): the champion alone serves (fail closed);
- ``ShadowScorer``: the challenger's scoring of served rows, on its own thread after the
  answer, through a bounded queue (a full queue drops and counts, never blocks); the scores go
  to the prediction log's ``shadow_predictions`` paired with the served batch;
- routing (``route``): in canary, row by row, ``routing_bucket(key) < share`` picks the
  challenger; the key is the row's ``customer_id``, else the request's ``X-Routing-Key``,
  else a hash of the row's features;
- ``GuardrailWindow``: the challenger's error ratio, p95 latency and high-risk rate against
  the champion's over the record's ``window_seconds``; a breach rolls the canary back: share
  0 here at once, the sibling workers told through the shared state dir (app.workers), the
  record written ``rolled_back`` with the reason for the other replicas.

Decided: in canary a challenger that fails on its share does not fail the request; the
champion answers those rows, and the failure counts as a challenger error (which feeds the
error-ratio guardrail). In canary the champion also scores the challenger's rows, in the same
model call as its own rows (app.service), so the evidence stays paired on the customers the
challenger answered (the record's ``paired``; false: routing alone).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np

from app.batcher import ColumnRows, Row, join_rows, take_rows
from app.loopflush import defer
from app.metrics import CHAMPION_ROLE, Metrics
from app.model import ServedModel, load_model
from app.settings import Settings
from app.source import REGISTRY_UNREACHABLE, describe, failure_reason, tracking_uri
from app.workers import StateDir, state_root
from churn.prediction_log import PredictionLogWriter, ShadowBatch
from churn.rollout import (
    CANARY,
    ROLLED_BACK,
    SHADOW,
    ChallengerState,
    RolloutError,
    RolloutRecord,
    read_challenger,
    read_record,
    routing_bucket,
    routing_buckets,
    write_record,
)
from churn.schema import FeatureSchema

logger = logging.getLogger("app.rollout")

CUSTOMER_ID = "customer_id"  # the optional routing field of a request's customer
ROUTING_HEADER = "x-routing-key"

# challenger_refused_total{reason}
SCHEMA_MISMATCH = "schema_mismatch"
BAD_BUNDLE = "bad_bundle"
NO_RECORD = "no_record"

# rollout_rollbacks_total{reason}
ERROR_RATIO = "error_ratio"
LATENCY = "latency"
HIGH_RISK = "high_risk"


# --------------------------------------------------------------------------- schema


def request_schema(schema: FeatureSchema) -> list[tuple[Any, ...]]:
    """What a request must look like for a model: each feature's name, kind and domain rules
    (what the request types are built from). What training merely observed (ranges,
    categories) may differ between two versions that score the same rows."""
    return [
        (s.name, s.kind, s.min, s.max, s.integer, tuple(s.allowed or ()), s.imputed)
        for s in schema.features
    ]


def schema_difference(champion: FeatureSchema, challenger: FeatureSchema) -> str | None:
    """Why the challenger cannot score the champion's requests; None when it can."""
    if champion.names != challenger.names:
        return f"features {challenger.names} instead of {champion.names}"
    for ours, theirs in zip(request_schema(champion), request_schema(challenger), strict=True):
        if ours != theirs:
            return f"feature '{ours[0]}' has other request rules ({theirs[1:]} vs {ours[1:]})"
    return None


# --------------------------------------------------------------------------- routing


def feature_key(row: Row, names: Sequence[str]) -> str:
    """A row's routing key when it brings none: its feature values, in schema order (the same
    customer data routes the same way in every worker and replica)."""
    return repr([row.get(name) for name in names])


def routing_keys(
    rows: Sequence[Row],
    header: str | None,
    names: Sequence[str],
    given: list[Any] | None = None,
) -> list[str]:
    """Per row: its ``customer_id`` (as text: 42 and "42" are one customer), else the
    request's X-Routing-Key, else a hash of its features (`given`: the rows' customer ids,
    when the caller has read them already)."""
    if given is None:
        given = _customer_ids(rows)
    if set(map(type, given)) == {str}:  # every row names its customer (the usual batch)
        return given
    keys = [key if type(key) is str else str(key) if key is not None else header for key in given]
    if header is None and None in keys:  # neither: the row's own data
        keys = [
            key if key is not None else feature_key(rows[i], names) for i, key in enumerate(keys)
        ]
    return keys  # type: ignore[return-value]  # no None left


def _customer_ids(rows: Sequence[Row]) -> list[Any]:
    """Each row's ``customer_id`` (None where it has none)."""
    if isinstance(rows, ColumnRows):
        return rows.columns.get(CUSTOMER_ID) or [None] * len(rows)
    return list(map(dict.get, rows, repeat(CUSTOMER_ID)))  # type: ignore[arg-type]


def route(rows: Sequence[Row], header: str | None, schema: FeatureSchema, share: float) -> Split:
    """Which of a request's rows the challenger answers at `share`, by their routing keys
    (``routing_keys``; sticky per key, see ``routing_bucket``). A request whose rows name no
    customer is routed whole by its X-Routing-Key (one hash, not one per row)."""
    if len(rows) == 1:  # /predict: the one row's key, and a split made once
        key = rows[0].get(CUSTOMER_ID)
        if key is None:
            key = header if header is not None else feature_key(rows[0], schema.names)
        return _ONE_MINE if routing_bucket(str(key)) < share else _ONE_THEIRS
    given = _customer_ids(rows)
    try:  # the usual batch: every row names its customer by a string, hashed as it is
        return _split(routing_buckets(given), share)
    except TypeError:  # a row without one (None), or an integer
        pass
    if header is not None and not any(key is not None for key in given):
        return challenger_rows([header], share).widened(len(rows))  # one key for all
    return challenger_rows(routing_keys(rows, header, schema.names, given), share)


class Split:
    """A canary batch's rows by the model that answers them: ``chosen``, per row, whether the
    challenger answers it (routing's mask).

    The two parts are made, and put back together, around the smaller one (the challenger's
    at a canary's usual share): its positions are listed once (``few_at``); its rows are
    taken by position and the larger part is a copy of the batch with them deleted; merging
    inserts its answers back at their positions into a copy of the larger part's. Work per
    row of the smaller part only, plus a block copy; nothing per row of the whole batch."""

    def __init__(self, chosen: np.ndarray) -> None:
        self.chosen = chosen

    def __len__(self) -> int:
        return len(self.chosen)

    @cached_property
    def mine_count(self) -> int:
        """How many rows the challenger answers."""
        return int(np.count_nonzero(self.chosen))

    @cached_property
    def picked(self) -> list[bool]:
        """Per row, whether the challenger answers it."""
        picked: list[bool] = self.chosen.tolist()
        return picked

    @cached_property
    def few_mine(self) -> bool:
        """Whether the challenger's part is the smaller one (at most half the rows)."""
        return 2 * self.mine_count <= len(self.chosen)

    @cached_property
    def few_at(self) -> list[int]:
        """The positions of the smaller part's rows, ascending."""
        few = self.chosen if self.few_mine else ~self.chosen
        positions: list[int] = np.flatnonzero(few).tolist()
        return positions

    def parts(self, rows: Sequence[Row]) -> tuple[Sequence[Row], Sequence[Row]]:
        """The challenger's rows and the champion's, each in request order; columnar rows by
        column (``take_rows``)."""
        if isinstance(rows, ColumnRows):
            return take_rows(rows, np.flatnonzero(self.chosen).tolist()), take_rows(
                rows, np.flatnonzero(~self.chosen).tolist()
            )
        few_at = self.few_at
        few = [rows[i] for i in few_at]
        many = list(rows)
        for i in reversed(few_at):  # from the end: the positions before stay valid
            del many[i]
        return (few, many) if self.few_mine else (many, few)

    def merge(self, theirs: Sequence[Any], mine: Sequence[Any]) -> list[Any]:
        """One value per row in request order from the champion's part (`theirs`) and the
        challenger's (`mine`), each in request order: the smaller part's values inserted at
        their positions, in ascending order, into a copy of the larger part's."""
        few, many = (mine, theirs) if self.few_mine else (theirs, mine)
        merged = list(many)
        for i, value in zip(self.few_at, few, strict=True):
            merged.insert(i, value)
        return merged

    def widened(self, rows: int) -> Split:
        """A one-row split applied to each of `rows` rows (they share one routing key)."""
        return Split(np.full(rows, bool(self.chosen[0])))


_ONE_MINE = Split(np.ones(1, dtype=bool))
_ONE_THEIRS = Split(np.zeros(1, dtype=bool))


def challenger_rows(keys: Sequence[str], share: float) -> Split:
    """Which rows the challenger answers at `share` (sticky per key; see routing_bucket)."""
    if len(keys) == 1:
        return _ONE_MINE if routing_bucket(keys[0]) < share else _ONE_THEIRS
    return _split(routing_buckets(keys), share)


def _split(buckets: np.ndarray, share: float) -> Split:
    return Split(buckets < share)


# --------------------------------------------------------------------------- guardrails


@dataclass(frozen=True)
class Guardrails:
    """The canary's bounds, from the record (copied from the config's rollout section when
    the rollout started): every worker of every replica judges by the same numbers."""

    min_requests: int = 200
    window_seconds: float = 300.0
    max_error_ratio: float = 0.02
    max_p95_latency_ms: float = 250.0
    max_high_risk_rate_delta: float = 0.15

    @classmethod
    def from_record(cls, bounds: Mapping[str, Any]) -> Guardrails:
        """The record's bounds; a missing one takes the default, an unusable one is refused
        (RolloutError), so a typo never silently disables a guardrail."""
        values: dict[str, Any] = {}
        for name, default in cls().__dict__.items():
            if name not in bounds:
                continue
            value = bounds[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RolloutError(f"guardrail {name}={value!r} is not a number")
            if not math.isfinite(value) or value < 0:
                raise RolloutError(f"guardrail {name}={value!r} must be finite and >= 0")
            values[name] = type(default)(value)
        return cls(**values)


class WindowStats(NamedTuple):
    """What the guardrails judge: one worker's canary answers over the window (a tuple:
    made at every challenger answer, a tenth of what a frozen dataclass costs)."""

    challenger_rows: int = 0  # answered by the challenger
    challenger_errors: int = 0  # rows the challenger failed (the champion answered them)
    challenger_high: int = 0
    p95_latency_ms: float = 0.0  # of the challenger's calls
    champion_rows: int = 0
    champion_high: int = 0

    @property
    def error_ratio(self) -> float:
        seen = self.challenger_rows + self.challenger_errors
        return self.challenger_errors / seen if seen else 0.0

    @property
    def high_risk_delta(self) -> float | None:
        """|challenger's HIGH-tier rate - champion's|; None without answers of both."""
        if not self.challenger_rows or not self.champion_rows:
            return None
        return abs(
            self.challenger_high / self.challenger_rows - self.champion_high / self.champion_rows
        )


def judge(stats: WindowStats, bounds: Guardrails) -> str | None:
    """The breached guardrail (error_ratio, latency, high_risk), or None; nothing is judged
    before ``min_requests`` challenger answers (errors included) are in the window."""
    if stats.challenger_rows + stats.challenger_errors < bounds.min_requests:
        return None
    if stats.error_ratio > bounds.max_error_ratio:
        return ERROR_RATIO
    if stats.challenger_rows and stats.p95_latency_ms > bounds.max_p95_latency_ms:
        return LATENCY
    delta = stats.high_risk_delta
    if delta is not None and delta > bounds.max_high_risk_rate_delta:
        return HIGH_RISK
    return None


# Latency bins for the window's p95: 5 % apart from 10 µs to over 100 s, so the p95 is known
# to within 5 % at O(1) cost per answer (a sort of every latency in a 300 s window would cost
# more than the answers it judges).
_LATENCY_BOUNDS = [1e-5 * 1.05**i for i in range(340)]


class GuardrailWindow:
    """One worker's canary answers over the last `window_seconds` (event loop only).

    Kept in one-second slots with running sums (counts and a latency histogram): adding an
    answer and judging are O(1), and memory is a few hundred slots whatever the traffic. The
    p95's bin is followed as answers come and go (a step or two per judgement), so every
    challenger answer is judged on latency too."""

    def __init__(self, window_seconds: float) -> None:
        self.window_seconds = window_seconds
        # [second, challenger rows, errors, high, champion rows, high, {latency bin: calls}]
        self._slots: deque[list[Any]] = deque()
        self._counts = [0, 0, 0, 0, 0]
        self._latency = [0] * (len(_LATENCY_BOUNDS) + 1)
        self._calls = 0
        # the p95's bin when last judged, and how many calls are in it and the bins below
        self._at = 0
        self._upto = 0

    def add(
        self, challenger: bool, rows: int, high: int, errors: int, seconds: float, now: float
    ) -> None:
        second = int(now)
        slots = self._slots
        if not slots or slots[-1][0] != second:
            slots.append([second, 0, 0, 0, 0, 0, {}])
        slot = slots[-1]
        counts = self._counts
        if challenger:
            slot[1] += rows
            slot[2] += errors
            slot[3] += high
            counts[0] += rows
            counts[1] += errors
            counts[2] += high
            if rows:  # the latency of calls that answered
                index = bisect.bisect_left(_LATENCY_BOUNDS, seconds)
                slot[6][index] = slot[6].get(index, 0) + 1
                self._latency[index] += 1
                self._calls += 1
                if index <= self._at:
                    self._upto += 1
        else:
            slot[4] += rows
            slot[5] += high
            counts[3] += rows
            counts[4] += high

    def stats(self, now: float) -> WindowStats:
        """The window's figures at `now`."""
        slots = self._slots
        horizon = now - self.window_seconds
        counts = self._counts
        while slots and slots[0][0] + 1 <= horizon:  # the whole second is out
            _, rows, errors, high, champion_rows, champion_high, bins = slots.popleft()
            counts[0] -= rows
            counts[1] -= errors
            counts[2] -= high
            counts[3] -= champion_rows
            counts[4] -= champion_high
            for index, calls in bins.items():
                self._latency[index] -= calls
                self._calls -= calls
                if index <= self._at:
                    self._upto -= calls
        return WindowStats(counts[0], counts[1], counts[2], self._p95(), counts[3], counts[4])

    def _p95(self) -> float:
        """The p95 of the challenger's call latency in ms: the upper bound of its bin."""
        if not self._calls:
            return 0.0
        # the first bin where the running count reaches 95 %, moved from where it was
        wanted = 0.95 * self._calls
        latency, at, upto = self._latency, self._at, self._upto
        while upto < wanted:  # below it: up (the last bin holds the total)
            at += 1
            upto += latency[at]
        while at and upto - latency[at] >= wanted:  # the bin below reaches it too: down
            upto -= latency[at]
            at -= 1
        self._at, self._upto = at, upto
        return _LATENCY_BOUNDS[min(at, len(_LATENCY_BOUNDS) - 1)] * 1000


# --------------------------------------------------------------------------- shadow scoring


@dataclass
class _ShadowJob:
    model: ServedModel
    rows: Sequence[Row]
    batch_id: str
    served_version: str
    created_at: float


class ShadowScorer:
    """Scores served rows with the model that did not answer, on its own thread, after the
    answer: a bounded queue (rows), handed over once per event-loop iteration, drained in one
    model call per model. Every row submitted ends as scored and logged, or counted in
    ``shadow_predictions_total``: error (the model failed) or dropped (a full queue, its time
    budget spent, a full or disabled log).

    The time budget (`max_share`, SHADOW_MAX_TIME_SHARE) bounds what shadow may cost the
    answers: a token bucket of scoring seconds, refilled at `max_share` seconds per second
    (one second's worth at most). While it is spent, new shadow rows are dropped and counted:
    at saturation shadow scores a sample of the traffic instead of slowing every answer; below
    it, everything."""

    def __init__(
        self,
        metrics: Metrics,
        writer: PredictionLogWriter | None,
        max_rows: int,
        max_share: float = 1.0,
    ) -> None:
        self.metrics = metrics
        self.writer = writer
        self.max_rows = max_rows
        self.max_share = max_share
        self._budget = max_share  # seconds of scoring time available now
        self._refilled = time.monotonic()
        self._dropped = 0  # rows dropped on the event loop, counted once per iteration
        self._pending: list[_ShadowJob] = []
        self._jobs: queue.SimpleQueue[list[_ShadowJob] | None] = queue.SimpleQueue()
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._started = False
        self._stopped = False
        self.scored = 0

    def start(self) -> None:
        self._thread.start()
        self._started = True

    def stop(self, timeout: float = 5.0) -> None:
        """Score what is queued (bounded by `timeout`), then end the thread."""
        self._count_dropped()
        self._hand_over()
        self._stopped = True
        self._jobs.put(None)
        if self._started and self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, model: ServedModel, rows: Sequence[Row], batch_id: str, served: str) -> None:
        """Queue rows for shadow scoring (O(1), never blocks); counted dropped when full."""
        n = len(rows)
        now = time.monotonic()
        with self._lock:
            budget = self._budget + (now - self._refilled) * self.max_share
            self._budget = min(self.max_share, budget)
            self._refilled = now
            full = self._stopped or self._queued_rows + n > self.max_rows or self._budget <= 0
            if not full:
                self._queued_rows += n
        if full:
            self._dropped += n
            defer(self._count_dropped)
            return
        self._pending.append(_ShadowJob(model, rows, batch_id, served, time.time()))
        if len(self._pending) == 1:
            defer(self._hand_over)

    @property
    def queued(self) -> int:
        return self._queued_rows

    def _count_dropped(self) -> None:
        dropped, self._dropped = self._dropped, 0
        if dropped:
            self.metrics.shadow.labels("dropped").inc(dropped)

    def _hand_over(self) -> None:
        jobs, self._pending = self._pending, []
        if jobs:
            self._jobs.put(jobs)

    def _run(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            jobs = first
            while True:  # everything queued meanwhile, in one call per model
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._score_safely(jobs)
                    return
                jobs = [*jobs, *more]
            self._score_safely(jobs)

    def _score_safely(self, jobs: list[_ShadowJob]) -> None:
        """`_score`, and should anything else fail, the rows counted as errors and the thread
        kept alive (a dead shadow thread would hold its queue full forever)."""
        try:
            self._score(jobs)
        except Exception:
            logger.exception("shadow scoring failed unexpectedly")
            rows = sum(len(job.rows) for job in jobs)
            self.metrics.shadow.labels("error").inc(rows)
            with self._lock:
                self._queued_rows = max(0, self._queued_rows - rows)

    def _score(self, jobs: list[_ShadowJob]) -> None:
        by_model: dict[int, list[_ShadowJob]] = {}
        for job in jobs:
            by_model.setdefault(id(job.model), []).append(job)
        for group in by_model.values():
            rows = join_rows([job.rows for job in group])  # columnar parts stay columnar
            model = group[0].model
            started = time.perf_counter()
            try:
                answers = model.predict_rows(rows)
            except Exception as exc:  # the shadow model failed: the answers were sent already
                logger.warning(
                    "shadow scoring by version %s failed for %d row(s): %s",
                    model.version,
                    len(rows),
                    describe(exc),
                )
                self.metrics.shadow.labels("error").inc(len(rows))
                self._done(len(rows))
                continue
            elapsed = time.perf_counter() - started
            with self._lock:
                self._budget -= elapsed
            self.metrics.shadow_latency.observe(elapsed)
            self.metrics.shadow.labels("success").inc(len(rows))
            self.scored += len(rows)
            start = 0
            for job in group:
                end = start + len(job.rows)
                self._log(job, model, answers.probabilities[start:end], answers.tiers[start:end])
                start = end
            self._done(len(rows))

    def _log(
        self, job: _ShadowJob, model: ServedModel, probabilities: list[float], tiers: list[str]
    ) -> None:
        self.write(
            job.batch_id, job.created_at, model.version, job.served_version, probabilities, tiers
        )

    def write(
        self,
        batch_id: str,
        created_at: float,
        version: str,
        served_version: str,
        probabilities: list[float],
        tiers: list[str],
    ) -> None:
        """`version`'s scores of the served batch `batch_id` (answered by `served_version`) to
        the log's ``shadow_predictions`` (thread-safe): this scorer's, and a canary's pairs,
        which the champion computes in the call that answers its own rows."""
        if self.writer is None:
            self.metrics.shadow.labels("dropped").inc(len(probabilities))
            return
        # a refusal (queue full, closed) is counted by the writer's on_shadow_drop
        self.writer.enqueue(
            ShadowBatch(
                batch_id=batch_id,
                created_at=created_at,
                model_version=version,
                served_version=served_version,
                probabilities=probabilities,
                tiers=tiers,
            )
        )

    def _done(self, rows: int) -> None:
        with self._lock:
            self._queued_rows -= rows


# --------------------------------------------------------------------------- the worker's rollout


@dataclass(frozen=True)
class Challenger:
    """The challenger this worker applies now (one reference, swapped whole)."""

    model: ServedModel | None  # None when the stage lets it answer nothing (final stages)
    record: RolloutRecord
    guardrails: Guardrails
    rolled_back: str | None = None  # the guardrail breached here (or in a sibling worker)

    @property
    def version(self) -> str:
        return self.record.version

    @property
    def stage(self) -> str:
        return ROLLED_BACK if self.rolled_back else self.record.stage

    @cached_property  # read on every request; the challenger is swapped whole on a change
    def share(self) -> float:
        """The share the challenger answers here now (0 once rolled back)."""
        if self.model is None or self.rolled_back:
            return 0.0
        return self.record.serving_share

    @cached_property
    def shadowing(self) -> bool:
        return self.model is not None and not self.rolled_back and self.record.shadowing


@dataclass
class _Refusal:
    version: str
    reason: str
    detail: str
    champion: str | None = None  # the champion it was judged against (schema, bundle)

    def final(self, version: str, champion: ServedModel) -> bool:
        """Whether `version` stays refused beside `champion` (not loaded again): a bad bundle
        or another schema; a missing record is looked at again on every tick."""
        return (
            self.version == version
            and self.reason in (BAD_BUNDLE, SCHEMA_MISMATCH)
            and self.champion == champion.version
        )


ROLLBACK_FILE = "rollback.json"


class Rollout:
    """One worker's view of the rollout: the challenger, routing, shadow and guardrails."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        writer: PredictionLogWriter | None,
        loader: Callable[[Settings], ServedModel] = load_model,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.loader = loader
        self.current: Challenger | None = None
        self.shadow = ShadowScorer(
            metrics, writer, settings.shadow_queue_size, settings.shadow_max_time_share
        )
        self.window = GuardrailWindow(Guardrails().window_seconds)
        self._refused: _Refusal | None = None
        self.problem: str | None = None  # why a challenger in the registry is not used
        root = state_root(settings.model_state_dir)
        self.state = StateDir(root, stale_after=60.0) if root is not None else None
        self._record_pending: tuple[str, str, str] | None = None  # version, reason, detail
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = asyncio.Lock()
        metrics.set_rollout(None, 0.0)
        metrics.on_answers = self._answered

    @property
    def enabled(self) -> bool:
        """A challenger is followed only for a registry model (MODEL_URI)."""
        return self.settings.rollout_enabled and self.settings.model_uri is not None

    def start(self) -> None:
        self.shadow.start()

    def stop(self) -> None:
        self.shadow.stop()

    def report(self) -> dict[str, Any]:
        current = self.current
        refused = self._refused
        return {
            "challenger_version": current.version if current else None,
            "stage": current.stage if current else None,
            "share": current.share if current else 0.0,
            "paired": current.record.paired if current else None,
            "rolled_back": current.rolled_back if current else None,
            "guardrails": current.record.guardrails if current else None,
            "refused": {"version": refused.version, "reason": refused.reason} if refused else None,
            "problem": self.problem,
        }

    # ------------------------------------------------------------------ following the registry

    async def sync(self, champion: ServedModel) -> None:
        """Follow ``@challenger`` and its record (the watcher's tick). An unreachable registry
        keeps what this worker applies (an outage says nothing about the rollout)."""
        if not self.enabled:
            return
        async with self._lock:
            from churn.registry import RegistryError, client, parse_models_uri

            name, _, _ = parse_models_uri(self.settings.model_uri or "")
            tracking = tracking_uri(self.settings) or ""
            try:
                state = await asyncio.to_thread(read_challenger, client(tracking), name)
            except RegistryError as exc:
                logger.warning("cannot read the rollout (%s); keeping what applies", describe(exc))
                return
            except Exception as exc:  # client errors of many types: an outage, never "none"
                logger.warning("cannot read the rollout (%s); keeping what applies", describe(exc))
                return
            await self._apply(state, champion, name)
            await self._write_pending_record(name)

    async def _apply(self, state: ChallengerState | None, champion: ServedModel, name: str) -> None:
        current = self.current
        if state is None:
            if current is not None:
                logger.info("no @challenger any more; the champion alone serves")
            self._set(None)
            self.problem = None
            return
        if state.record is None:
            # Fail closed: a challenger without a readable record is never used.
            self._refuse(state.version, NO_RECORD, state.problem or "no rollout record")
            self._set(None)
            self.problem = state.problem
            return
        self.problem = None
        record = state.record
        try:
            bounds = Guardrails.from_record(record.guardrails)
        except RolloutError as exc:
            self._refuse(state.version, NO_RECORD, str(exc))
            self._set(None)
            self.problem = str(exc)
            return
        rolled_back = current.rolled_back if current and current.version == record.version else None
        if not record.active:
            self._set(Challenger(None, record, bounds, rolled_back))
            return
        model = current.model if current and current.version == record.version else None
        if model is not None and schema_difference(champion.schema, model.schema):
            # The champion changed under it: refused without loading it again.
            self._refuse(
                record.version, SCHEMA_MISMATCH, "differs from the new champion's", champion
            )
            model = None
        if model is None:
            refused = self._refused
            if refused is not None and refused.final(record.version, champion):
                self._set(None)
                return
            model = await self._load(name, record.version, champion)
            if model is None:
                self._set(None)
                return
        self._set(Challenger(model, record, bounds, rolled_back))

    async def _load(self, name: str, version: str, champion: ServedModel) -> ServedModel | None:
        uri = f"models:/{name}/{version}"
        settings = self.settings.model_copy(update={"model_uri": uri})
        try:
            model = await asyncio.to_thread(self.loader, settings)
        except Exception as exc:
            if failure_reason(exc, settings) == REGISTRY_UNREACHABLE:
                # an outage says nothing about the version: tried again on the next tick
                logger.warning("cannot fetch challenger version %s yet: %s", version, describe(exc))
                return None
            self._refuse(version, BAD_BUNDLE, describe(exc), champion)
            return None
        difference = schema_difference(champion.schema, model.schema)
        if difference is not None:
            self._refuse(version, SCHEMA_MISMATCH, difference, champion)
            return None
        self._refused = None
        logger.info(
            "challenger loaded",
            extra={"model_version": model.version, "backend": model.backend, "source": uri},
        )
        return model

    def _refuse(
        self, version: str, reason: str, detail: str, champion: ServedModel | None = None
    ) -> None:
        """Refuse a challenger version (logged and counted once per version and reason)."""
        refused = self._refused
        judged_by = champion.version if champion is not None else None
        if refused is not None and (refused.version, refused.reason, refused.champion) == (
            version,
            reason,
            judged_by,
        ):
            return
        self._refused = _Refusal(version, reason, detail, judged_by)
        self.metrics.challenger_refused.labels(reason).inc()
        logger.error(
            "CHALLENGER REFUSED: version %s (%s: %s); the champion alone serves",
            version,
            reason,
            detail,
            extra={"model_version": version, "reason": reason},
        )

    def _set(self, challenger: Challenger | None) -> None:
        previous = self.current
        self.current = challenger
        if challenger is not None and (
            previous is None
            or (previous.version, previous.record.started, previous.guardrails)
            != (challenger.version, challenger.record.started, challenger.guardrails)
        ):
            # another rollout (or other bounds): judged on its own answers only
            self.window = GuardrailWindow(challenger.guardrails.window_seconds)
        if challenger is None:
            self.metrics.set_rollout(None, 0.0)
        else:
            self.metrics.set_rollout(challenger.stage, challenger.share)
        if (previous.stage if previous else None, previous.share if previous else 0.0) != (
            challenger.stage if challenger else None,
            challenger.share if challenger else 0.0,
        ):
            logger.info(
                "rollout applied",
                extra={
                    "model_version": challenger.version if challenger else None,
                    "stage": challenger.stage if challenger else None,
                    "share": challenger.share if challenger else 0.0,
                },
            )

    # ------------------------------------------------------------------ guardrails

    def observe(self, challenger: bool, rows: int, high: int, errors: int, seconds: float) -> None:
        """Record canary answers (event loop) and judge the guardrails after each challenger
        answer (its error ratio, p95 latency and HIGH-tier rate)."""
        current = self.current
        if current is None or current.share <= 0.0:
            return
        now = time.monotonic()
        self.window.add(challenger, rows, high, errors, seconds, now)
        if not challenger:
            return
        stats = self.window.stats(now)
        reason = judge(stats, current.guardrails)
        if reason is not None:
            self.roll_back(current, reason, _describe_breach(reason, stats, current.guardrails))

    def _answered(self, role: str, rows: int, high: int) -> None:
        """The champion's answers of one event-loop iteration (`rows`, `high` in the HIGH
        tier), as the metrics apply them (Metrics.on_answers): during a canary they feed the
        comparison of HIGH-tier rates, judged at the challenger's answers, so one iteration's
        lag costs nothing and /predict does no guardrail work per champion answer."""
        if role == CHAMPION_ROLE:
            self.observe(False, rows, high, 0, 0.0)

    def roll_back(self, current: Challenger, reason: str, detail: str) -> None:
        """Share 0 here at once; tell the sibling workers; write the record for the replicas."""
        if self.current is not current or current.rolled_back:
            return
        self._set(replace(current, rolled_back=reason))
        self.metrics.rollbacks.labels(reason).inc()
        logger.error(
            "CANARY ROLLED BACK: challenger version %s breached the %s guardrail (%s); "
            "the champion answers everything",
            current.version,
            reason,
            detail,
            extra={"model_version": current.version, "reason": reason},
        )
        self._record_pending = (current.version, reason, detail)
        self._spawn(self._tell_siblings(current, reason))
        if self.settings.model_uri is not None:
            from churn.registry import parse_models_uri

            name, _, _ = parse_models_uri(self.settings.model_uri)
            self._spawn(self._write_pending_record(name))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tell_siblings(self, current: Challenger, reason: str) -> None:
        if self.state is None:
            return
        payload = {
            "version": current.version,
            "started": current.record.started,  # this rollout, not a later one of the version
            "reason": reason,
            "at": time.time(),
            "by_pid": os.getpid(),
        }
        try:
            await asyncio.to_thread(self.state.write_extra, ROLLBACK_FILE, payload)
        except OSError as exc:
            logger.error("cannot tell the sibling workers of the rollback: %s", exc)

    async def follow_siblings(self) -> None:
        """Apply a rollback a sibling worker decided (the lifecycle's sync tick)."""
        current = self.current
        if self.state is None or current is None or current.rolled_back or current.share <= 0:
            return
        try:
            told = await asyncio.to_thread(self.state.read_extra, ROLLBACK_FILE)
        except OSError:
            return
        if told is None or (str(told.get("version")), told.get("started")) != (
            current.version,
            current.record.started,
        ):
            return
        if self.current is current:
            reason = str(told.get("reason"))
            self._set(replace(current, rolled_back=reason))
            logger.error(
                "canary of version %s rolled back by worker %s (%s)",
                current.version,
                told.get("by_pid"),
                reason,
            )

    async def _write_pending_record(self, name: str) -> None:
        """Write ``rolled_back`` on the challenger's record (retried on the next tick when
        the registry cannot be reached)."""
        pending = self._record_pending
        if pending is None:
            return
        version, reason, detail = pending
        from churn.registry import client

        tracking = tracking_uri(self.settings) or ""

        def write() -> None:
            mlflow_client = client(tracking)
            record = read_record(mlflow_client, name, version)
            if record is None or not record.active:
                return  # ended meanwhile (an operator, another worker or replica)
            moved = record.moved(
                ROLLED_BACK,
                reason=f"guardrail {reason}: {detail}",
                by=f"api guardrail (pid {os.getpid()})",
            )
            write_record(mlflow_client, name, moved)

        try:
            await asyncio.to_thread(write)
        except Exception as exc:
            logger.warning(
                "cannot write the rollback to the registry yet (%s); retrying", describe(exc)
            )
            return
        if self._record_pending == pending:
            self._record_pending = None


def _describe_breach(reason: str, stats: WindowStats, bounds: Guardrails) -> str:
    if reason == ERROR_RATIO:
        return (
            f"error ratio {stats.error_ratio:.3f} > {bounds.max_error_ratio} over "
            f"{stats.challenger_rows + stats.challenger_errors} challenger rows"
        )
    if reason == LATENCY:
        return f"p95 latency {stats.p95_latency_ms:.2f} ms > {bounds.max_p95_latency_ms} ms"
    return f"high-risk rate delta {stats.high_risk_delta:.3f} > {bounds.max_high_risk_rate_delta}"


__all__ = [
    "CANARY",
    "CUSTOMER_ID",
    "ROUTING_HEADER",
    "SHADOW",
    "Challenger",
    "GuardrailWindow",
    "Guardrails",
    "Rollout",
    "ShadowScorer",
    "Split",
    "WindowStats",
    "challenger_rows",
    "judge",
    "route",
    "routing_keys",
    "schema_difference",
]
