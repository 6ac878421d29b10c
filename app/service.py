"""The model service: owns the served model, predicts, logs predictions, reloads safely.

The HTTP layer stays thin and delegates here. A reload loads and verifies the new bundle on a
worker thread beside the old one and swaps one reference; a bad bundle leaves the old model
serving and the reason is returned, logged and counted.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from app.batcher import MicroBatcher, Row
from app.ids import RandomHex
from app.metrics import Metrics
from app.model import Answers, ModelLoadError, ServedModel, load_model
from app.settings import Settings
from churn.prediction_log import (
    PredictionBatch,
    PredictionLogWriter,
    prediction_exists,
    prediction_ids,
    record_feedback,
    split_prediction_id,
)

logger = logging.getLogger("app.service")


class ModelNotReadyError(RuntimeError):
    """No verified model is loaded yet (or the last load failed)."""


class ReloadError(RuntimeError):
    """A reload was refused; the previous model is still serving."""


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
        self.last_error: str | None = None
        self._reload_lock = asyncio.Lock()

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
        """Load and verify the configured model, then swap it in (serialised with reloads)."""
        async with self._reload_lock:
            previous = self.model
            try:
                model = await asyncio.to_thread(self.loader, self.settings)
            except ModelLoadError as exc:
                self.last_error = str(exc)
                self.metrics.reloads.labels("failure").inc()
                logger.error(
                    "model load failed; %s",
                    "previous model keeps serving" if previous else "not ready",
                    extra={"reason": str(exc)},
                )
                raise ReloadError(str(exc)) from None
            self._swap(model, previous)
            return ReloadResult(
                changed=previous is None
                or previous.version != model.version
                or previous.run_id != model.run_id,
                model=model,
                previous_version=previous.version if previous else None,
            )

    def _swap(self, model: ServedModel, previous: ServedModel | None) -> None:
        self.model = model  # one reference: requests in flight keep the model they took
        self.last_error = None
        # The loaded libraries and model are many long-lived objects; every full
        # collection walked them all (~100 ms pauses, the /predict p99 in bench/). Frozen
        # objects are skipped by the collector and still freed by reference counting.
        gc.freeze()
        self.metrics.set_model(*model.labels, previous=previous.labels if previous else None)
        self.metrics.reloads.labels("success").inc()
        logger.info(
            "model loaded",
            extra={
                "model_version": model.version,
                "backend": model.backend,
                "backend_reason": model.backend_reason,
                "source": model.source,
                "previous_version": previous.version if previous else None,
            },
        )

    def require_model(self) -> ServedModel:
        model = self.model
        if model is None:
            raise ModelNotReadyError(self.last_error or "the model is still loading")
        return model

    # ------------------------------------------------------------------ prediction

    async def answer(self, model: ServedModel, rows: list[Row]) -> tuple[Answers, list[str]]:
        """Answers and new prediction ids for `rows` (validated by the model's codec), in
        order; logged and counted (categories unseen in training too, as the model saw them)."""
        started = time.perf_counter()
        answers: Answers = await self.batcher.predict(model, rows)
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
        if self.log_writer is None:
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


class UnknownPredictionError(LookupError):
    """Feedback names a prediction id that was never logged."""


class FeedbackUnavailableError(RuntimeError):
    """Feedback cannot be stored right now (log disabled or store down)."""
