"""The churn API: app factory and lifespan. Run with ``uvicorn app.main:app``.

Importing this module builds the app but loads nothing: the model is loaded and verified in
the lifespan, kept on ``app.state.service`` and injected into handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api import admin_router, router
from app.fastpath import PredictFastPath
from app.logging import configure_logging
from app.metrics import Metrics, mark_process_dead
from app.middleware import RequestMiddleware
from app.openapi import OPENAPI_URL, add_docs, custom_openapi
from app.service import ModelService, ReloadError
from app.settings import Settings
from app.watcher import watch
from churn.prediction_log import PredictionLogWriter, make_engine

logger = logging.getLogger("app.main")

DESCRIPTION = """
Customer churn predictions from the model registered as production.

`POST /predict` takes one customer and answers the churn probability, the decision, a risk
tier (HIGH / MEDIUM / LOW) and the model version; send the returned `prediction_id` with the
real outcome to `POST /feedback` later. The request schema comes from the served model's
feature schema.
"""


def _log_writer(settings: Settings, metrics: Metrics) -> PredictionLogWriter | None:
    if not settings.prediction_log_enabled:
        return None
    return PredictionLogWriter(
        make_engine(settings.database_url),
        queue_size=settings.prediction_log_queue_size,
        batch_size=settings.prediction_log_batch_size,
        flush_interval=settings.prediction_log_flush_interval,
        on_drop=lambda reason, n: metrics.dropped.labels(reason).inc(n),
    )


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    configure_logging(settings.log_level)
    service = ModelService(settings, app.state.metrics, _log_writer(settings, app.state.metrics))
    app.state.service = service
    if service.log_writer is not None:
        await asyncio.to_thread(service.log_writer.prepare)
    service.start()
    try:
        await service.load()
    except ReloadError as exc:
        if settings.model_required:
            await asyncio.to_thread(service.stop)
            raise RuntimeError(
                f"MODEL_REQUIRED=true and the model cannot be served: {exc}"
            ) from None
    watcher = None
    if settings.model_watch_interval > 0:
        watcher = asyncio.create_task(watch(service, settings.model_watch_interval))
    try:
        yield
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        logger.info("shutting down: flushing the prediction log")
        await asyncio.to_thread(service.stop)
        app.state.metrics.flush()
        mark_process_dead()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for `settings` (default: from the environment). Loads nothing yet."""
    settings = settings or Settings()
    app = FastAPI(
        title="Churn prediction API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # FastAPI's own pages fetch Swagger UI and ReDoc from a CDN; add_docs serves local ones.
        docs_url=None,
        redoc_url=None,
        openapi_url=OPENAPI_URL if settings.docs_enabled else None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.include_router(router)
    if settings.admin_enabled:
        app.include_router(admin_router)
    if settings.docs_enabled:
        add_docs(app)
    # Innermost: inside CORS and the request middleware, so both apply to it unchanged.
    app.add_middleware(PredictFastPath, state=app.state, routes=router.routes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Authorization", "X-Request-ID"],
        )
    app.add_middleware(
        RequestMiddleware, metrics=app.state.metrics, max_body_bytes=settings.max_body_bytes
    )
    app.openapi = custom_openapi(app)  # type: ignore[method-assign]
    return app


app = create_app()
