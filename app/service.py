"""The model service: owns the served model, predicts, logs predictions, reloads safely.

The HTTP layer stays thin and delegates here. A reload loads and verifies the new bundle on a
worker thread beside the old one and swaps one reference; a bad bundle leaves the old model
serving and the reason is returned, logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from app.batcher import MicroBatcher, Row
from app.ids import RandomHex
from app.metrics import CHALLENGER_ROLE, CHAMPION_ROLE, Metrics
from app.model import Answers, ServedModel, SplitAnswers, load_model
from app.rollout import Rollout, Split, route
from app.settings import Settings
from app.source import STILL_LOADING, Release, describe, failure_reason, served_release
from churn.prediction_log import (
    PredictionBatch,
    PredictionLogWriter,
    prediction_exists,
    prediction_ids,
    record_feedback,
    split_prediction_id,
)
from churn.redact import redact

logger = logging.getLogger("app.service")


class ModelNotReadyError(RuntimeError):
    """No verified model is loaded yet (or the last load failed)."""


class ReloadError(RuntimeError):
    """A reload was refused; the previous model is still serving.

    ``str()`` is a stable reason a client may read (app.source); ``detail`` is the redacted
    exception text, for logs only.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ReloadResult:
    changed: bool
    model: ServedModel
    previous_version: str | None


class ModelService:
    """Everything the handlers need, created once per app in the lifespan."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        log_writer: PredictionLogWriter | None,
        loader: Callable[[Settings], ServedModel] = load_model,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.log_writer = log_writer
        self.loader = loader
        self.batcher = MicroBatcher()
        # Explanations on a thread of their own (the numba kernel releases the GIL): a plain
        # prediction never waits behind one.
        self._explainer = ThreadPoolExecutor(1, thread_name_prefix="explain")
        self._ids = RandomHex()
        self.model: ServedModel | None = None
        # client-safe reason of the last failed load (None after a good one)
        self.last_error: str | None = None
        # what the served model stands for (its alias) and when it was swapped in
        self.release: Release | None = None
        self.loaded_at: float | None = None
        # the challenger beside the champion (progressive delivery)
        self.rollout = Rollout(settings, metrics, log_writer)
        self._reload_lock = asyncio.Lock()
        self._inflight: asyncio.Future[ServedModel] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.batcher.start()
        self.rollout.start()
        if self.log_writer is not None:
            self.log_writer.start()

    def stop(self) -> None:
        self.batcher.stop()
        self._explainer.shutdown(wait=True, cancel_futures=True)
        self.rollout.stop()  # its last shadow scores go to the log before it closes
        if self.log_writer is not None:
            self.log_writer.close()

    async def load(self) -> ReloadResult:
        """Load and verify the configured model, then swap it in (serialised with reloads).

        A failure raises ReloadError with a stable reason; the detail (credentials redacted)
        goes to the log, never to a client.
        """
        async with self._reload_lock:
            previous = self.model
            try:
                # Shielded: a cancelled caller (shutdown) cannot stop the thread, so `settle`
                # waits for it instead of leaving it running behind the lifespan's back.
                self._inflight = asyncio.ensure_future(
                    asyncio.to_thread(self.loader, self.settings)
                )
                # retrieved here too, so an abandoned failure is not logged with its raw text
                self._inflight.add_done_callback(_consume)
                model = await asyncio.shield(self._inflight)
                release = await asyncio.to_thread(
                    served_release, self.settings, model.name, model.version
                )
            except Exception as exc:  # ModelLoadError, registry errors: fail closed, serve on
                reason = failure_reason(exc, self.settings)
                detail = describe(exc)
                self.last_error = reason
                self.metrics.reloads.labels("failure").inc()
                logger.error(
                    "model load failed: %s (%s); %s",
                    reason,
                    detail,
                    "previous model keeps serving" if previous else "not ready",
                    extra={"reason": reason, "detail": detail},
                )
                raise ReloadError(reason, detail) from None
            self._swap(model, previous, release)
            return ReloadResult(
                changed=previous is None
                or previous.version != model.version
                or previous.run_id != model.run_id,
                model=model,
                previous_version=previous.version if previous else None,
            )

    async def settle(self, timeout: float) -> None:
        """Wait (bounded) for a load still running in its thread, e.g. after a shutdown
        cancelled the task that started it."""
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            await asyncio.wait([inflight], timeout=timeout)

    def _swap(self, model: ServedModel, previous: ServedModel | None, release: Release) -> None:
        self.release = release
        self.loaded_at = time.time()
        self.model = model  # one reference: requests in flight keep the model they took
        self.last_error = None
        self.metrics.set_model(*model.labels, previous=previous.labels if previous else None)
        self.metrics.reloads.labels("success").inc()
        logger.info(
            "model loaded",
            extra={
                "model_version": model.version,
                "model_alias": release.alias,
                "backend": model.backend,
                "backend_reason": model.backend_reason,
                "source": redact(model.source),
                "previous_version": previous.version if previous else None,
            },
        )

    def require_model(self) -> ServedModel:
        model = self.model
        if model is None:
            raise ModelNotReadyError(self.last_error or STILL_LOADING)
        return model

    # ------------------------------------------------------------------ prediction

    async def answer(
        self,
        model: ServedModel,
        rows: Sequence[Row],
        routing_key: str | None = None,
        explain: bool = False,
    ) -> tuple[Answers | SplitAnswers, Sequence[str]]:
        """Answers and new prediction ids for `rows` (validated by the model's codec), in
        order; logged and counted (categories unseen in training too, as the model saw them).

        With a challenger (app.rollout): in shadow the champion answers and the challenger
        scores the same rows after the answer; in canary each row goes to the model its
        routing key picks (``routing_key``: the request's X-Routing-Key), and
        ``answers.role`` / ``answers.versions`` say who answered.

        With `explain` (the codec checked the champion can) each answer carries its
        explanation by the model that answered it; the prediction is logged exactly as
        without, and the explained rows are counted. A challenger that cannot explain does not
        answer explained requests in canary (the champion does): never a guess, never a
        challenger error."""
        challenger = self.rollout.current
        if challenger is None or challenger.model is None:
            answers, batch_id, ids = await self._score(model, rows, CHAMPION_ROLE, explain)
            return answers, ids
        if challenger.shadowing:
            answers, batch_id, ids = await self._score(model, rows, CHAMPION_ROLE, explain)
            self.rollout.shadow.submit(challenger.model, rows, batch_id, model.version)
            return answers, ids
        share = challenger.share
        if share <= 0.0 or (explain and challenger.model.explainer is None):
            answers, batch_id, ids = await self._score(model, rows, CHAMPION_ROLE, explain)
            return answers, ids
        split = route(rows, routing_key, model.schema, share)
        if not split.mine_count:  # no row for the challenger
            answers, batch_id, ids = await self._score(model, rows, CHAMPION_ROLE, explain)
            return answers, ids
        return await self._canary(
            model, challenger.model, rows, split, explain, challenger.record.paired
        )

    async def _canary(
        self,
        champion: ServedModel,
        challenger: ServedModel,
        rows: Sequence[Row],
        split: Split,
        explain: bool,
        paired: bool,
    ) -> tuple[Answers | SplitAnswers, Sequence[str]]:
        """The challenger answers the rows `split` gives it, the champion the others; when
        `paired` (the rollout record's choice) the champion also scores the challenger's rows
        (in the same model call as its own rows: the micro-batcher makes one call per model),
        logged paired with the challenger's answers. When the challenger fails, the
        champion's scores of its rows answer them instead: a challenger error (it feeds the
        error-ratio guardrail), never a failed request."""
        whole = split.mine_count == len(rows)
        mine_rows, their_rows = (rows, ()) if whole else split.parts(rows)
        started = time.perf_counter()
        # submitted in this order, the challenger's call runs first in the micro-batch
        mine_future = self.batcher.submit(challenger, mine_rows)
        theirs_future = None if whole else self.batcher.submit(champion, their_rows)
        pair_future = self.batcher.submit(champion, mine_rows) if paired else None
        for future in (pair_future, theirs_future):  # whatever this request ends up awaiting
            if future is not None:
                future.add_done_callback(_consume)
        try:
            mine = await mine_future
        except Exception as exc:
            self.metrics.observe_prediction_errors(len(mine_rows), CHALLENGER_ROLE)
            logger.warning(
                "challenger version %s failed on %d row(s) (%s); the champion answers them",
                challenger.version,
                len(mine_rows),
                describe(exc),
            )
            self.rollout.observe(True, 0, 0, len(mine_rows), time.perf_counter() - started)
            answers, _, ids = await self._score(champion, rows, CHAMPION_ROLE, explain)
            return answers, ids
        elapsed = time.perf_counter() - started
        high = mine.tiers.count("HIGH")
        self.rollout.observe(True, len(mine), high, 0, elapsed)
        mine, mine_batch, mine_ids = await self._served(
            challenger, mine, CHALLENGER_ROLE, elapsed, explain, high
        )
        if pair_future is not None:
            pair_future.add_done_callback(
                partial(
                    self._pair,
                    champion.version,
                    challenger.version,
                    mine_batch,
                    len(mine),
                    time.time(),
                )
            )
        mine = mine.with_role(CHALLENGER_ROLE, challenger.version)
        if theirs_future is None:
            return mine, mine_ids
        try:
            theirs = await theirs_future
        except Exception:
            self.metrics.observe_prediction_errors(len(their_rows), CHAMPION_ROLE)
            raise
        elapsed = time.perf_counter() - started
        theirs, _, their_ids = await self._served(
            champion, theirs, CHAMPION_ROLE, elapsed, explain, theirs.tiers.count("HIGH")
        )
        return _merge(split, mine, mine_ids, theirs, their_ids, champion.version)

    def _pair(
        self,
        version: str,
        served_version: str,
        batch_id: str,
        rows: int,
        created_at: float,
        future: asyncio.Future[Answers],
    ) -> None:
        """The champion's scores of a canary batch the challenger answered, to the log paired
        with it (or counted: an error when the champion failed on them)."""
        if future.cancelled():  # nobody scored them: counted, never lost silently
            self.metrics.shadow.labels("dropped").inc(rows)
            return
        if future.exception() is not None:  # logged by the batcher
            self.metrics.shadow.labels("error").inc(rows)
            return
        answers = future.result()
        self.metrics.shadow.labels("success").inc(len(answers))
        self.rollout.shadow.write(
            batch_id, created_at, version, served_version, answers.probabilities, answers.tiers
        )

    async def _score(
        self, model: ServedModel, rows: Sequence[Row], role: str, explain: bool = False
    ) -> tuple[Answers, str, list[str]]:
        """One model's answers for `rows`: counted under `role` and logged as one batch (the
        metrics hand the champion's to a canary's guardrail window, Rollout._answered)."""
        started = time.perf_counter()
        try:
            answers: Answers = await self.batcher.predict(model, rows)
        except Exception:
            self.metrics.observe_prediction_errors(len(rows), role)
            raise
        # the model call's time (prediction_latency_seconds), explanation excluded
        elapsed = time.perf_counter() - started
        high = answers.tiers.count("HIGH")
        return await self._served(model, answers, role, elapsed, explain, high)

    async def _served(
        self,
        model: ServedModel,
        answers: Answers,
        role: str,
        elapsed: float,
        explain: bool,
        high: int,
    ) -> tuple[Answers, str, list[str]]:
        """Answers `model` computed in `elapsed` seconds (`high` of them in the HIGH tier),
        explained when asked, counted under `role` and logged as one batch; with their batch
        id and prediction ids."""
        if explain:
            try:
                answers = await asyncio.get_running_loop().run_in_executor(
                    self._explainer, model.explain_answers, answers
                )
            except Exception:
                self.metrics.observe_prediction_errors(len(answers), role)
                raise
        batch_id = self._ids.batch_id()
        ids = prediction_ids(batch_id, len(answers))
        self.metrics.observe_predictions(
            answers.probabilities, answers.decisions, high, elapsed, role
        )
        if answers.warned:
            for name, count in answers.unknown_categories().items():
                self.metrics.unknown_category.labels(name).inc(count)
        if explain:
            self.metrics.explained.inc(len(answers))
        self._log(model, answers, batch_id)
        return answers, batch_id, ids

    def _log(self, model: ServedModel, answers: Answers, batch_id: str) -> None:
        """Hand the answers to the log writer; with the log disabled they are counted as
        dropped ("disabled"), so every served prediction is written or counted."""
        if self.log_writer is None:
            self.metrics.count_dropped("disabled", len(answers.probabilities))
            return
        self.log_writer.enqueue(
            PredictionBatch(
                batch_id=batch_id,
                created_at=time.time(),
                model_version=model.version,
                columns=answers.columns,
                probabilities=answers.probabilities,
                tiers=answers.tiers,
            )
        )

    # ------------------------------------------------------------------ feedback

    async def record_feedback(self, prediction_id: str, outcome: bool) -> None:
        """Store the true outcome of a logged prediction (joined to the log by id)."""
        writer = self.log_writer
        if writer is None:
            raise FeedbackUnavailableError(
                "the prediction log is disabled (PREDICTION_LOG_ENABLED=false); "
                "feedback cannot be joined to predictions"
            )
        try:
            known = writer.is_pending(prediction_id) or await asyncio.to_thread(
                prediction_exists, writer.engine, prediction_id
            )
            if not known and split_prediction_id(prediction_id) is not None:
                # Another worker may still hold it in its queue: wait for one flush.
                await asyncio.sleep(2 * self.settings.prediction_log_flush_interval)
                known = writer.is_pending(prediction_id) or await asyncio.to_thread(
                    prediction_exists, writer.engine, prediction_id
                )
            if not known:
                raise UnknownPredictionError(f"no prediction with id {prediction_id!r}")
            await asyncio.to_thread(record_feedback, writer.engine, prediction_id, outcome)
        except SQLAlchemyError as exc:
            logger.warning("feedback not stored: %s", exc, extra={"prediction_id": prediction_id})
            raise FeedbackUnavailableError(
                f"the prediction log store is unavailable ({type(exc).__name__}); retry later"
            ) from None


def _merge(
    split: Split,
    mine: Answers,
    my_ids: list[str],
    theirs: Answers,
    their_ids: list[str],
    champion_version: str,
) -> tuple[SplitAnswers, Sequence[str]]:
    """One batch's answers in request order from the challenger's rows (`split.chosen`) and
    the champion's, and their ids; each row says which version answered."""
    answers = SplitAnswers(split, theirs, their_ids, mine, my_ids, champion_version)
    return answers, answers.lazy_ids


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class UnknownPredictionError(LookupError):
    """Feedback names a prediction id that was never logged."""


class FeedbackUnavailableError(RuntimeError):
    """Feedback cannot be stored right now (log disabled or store down)."""
