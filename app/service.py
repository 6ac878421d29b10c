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
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from app.batcher import MicroBatcher, Row
from app.ids import RandomHex
from app.metrics import Metrics
from app.model import Answers, ServedModel, load_model
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
        self._ids = RandomHex()
        self.model: ServedModel | None = None
        # client-safe reason of the last failed load (None after a good one)
        self.last_error: str | None = None
        # what the served model stands for (its alias) and when it was swapped in
        self.release: Release | None = None
        self.loaded_at: float | None = None
        self._reload_lock = asyncio.Lock()
        self._inflight: asyncio.Future[ServedModel] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.batcher.start()
        if self.log_writer is not None:
            self.log_writer.start()

    def stop(self) -> None:
        self.batcher.stop()
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

    async def answer(self, model: ServedModel, rows: Sequence[Row]) -> tuple[Answers, list[str]]:
        """Answers and new prediction ids for `rows` (validated by the model's codec), in
        order; logged and counted (categories unseen in training too, as the model saw them)."""
        started = time.perf_counter()
        try:
            answers: Answers = await self.batcher.predict(model, rows)
        except Exception:
            self.metrics.observe_prediction_errors(len(rows))
            raise
        elapsed = time.perf_counter() - started
        batch_id = self._ids.batch_id()
        ids = prediction_ids(batch_id, len(rows))
        tiers = answers.tiers
        self.metrics.observe_predictions(
            answers.probabilities, answers.decisions, tiers.count("HIGH"), elapsed
        )
        if answers.warned:
            for name, count in answers.unknown_categories().items():
                self.metrics.unknown_category.labels(name).inc(count)
        self._log(model, answers, batch_id)
        return answers, ids

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


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class UnknownPredictionError(LookupError):
    """Feedback names a prediction id that was never logged."""


class FeedbackUnavailableError(RuntimeError):
    """Feedback cannot be stored right now (log disabled or store down)."""
