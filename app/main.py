"""The churn API: app factory and lifespan. Run with ``uvicorn app.main:app``.

Importing this module builds the app but loads nothing: the model is loaded and verified in
the lifespan, kept on ``app.state.service`` and injected into handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api import admin_router, hooks_router, router
from app.fastpath import PredictFastPath
from app.lifecycle import ModelLifecycle, load_checked
from app.logging import configure_logging
from app.loopflush import flush_all_and_stop_deferring
from app.metrics import Metrics, mark_process_dead
from app.middleware import RequestMiddleware
from app.openapi import OPENAPI_URL, add_docs, custom_openapi
from app.service import ModelService
from app.settings import Settings
from app.source import bounded_registry_calls
from app.v2 import V2InferFastPath
from app.v2 import router as v2_router
from app.watcher import watch
from churn.prediction_log import PredictionLogWriter, Spool, make_engine

logger = logging.getLogger("app.main")

DESCRIPTION = """
Customer churn predictions from the model registered as production.

`POST /predict` takes one customer and answers the churn probability, the decision, a risk
tier (HIGH / MEDIUM / LOW) and the model version; send the returned `prediction_id` with the
real outcome to `POST /feedback` later. The request schema comes from the served model's
feature schema.
"""


def spool_root(configured: Path | None) -> Path | None:
    """PREDICTION_LOG_SPOOL_DIR, else ``prediction-spool/`` in PROMETHEUS_MULTIPROC_DIR (the
    directory every worker of one server shares), else None: one process, no spool."""
    if configured is not None:
        return configured
    multiproc = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(multiproc) / "prediction-spool" if multiproc else None


def _log_writer(settings: Settings, metrics: Metrics) -> PredictionLogWriter | None:
    if not settings.prediction_log_enabled:
        return None
    root = spool_root(settings.prediction_log_spool_dir)
    try:
        spool = Spool(root) if root is not None else None
    except OSError as exc:
        raise RuntimeError(
            f"the prediction log spool directory {root} is not usable ({exc.strerror}); "
            "set PREDICTION_LOG_SPOOL_DIR to a writable directory the workers share"
        ) from None
    return PredictionLogWriter(
        make_engine(settings.database_url, timeout=settings.prediction_log_write_timeout),
        queue_size=settings.prediction_log_queue_size,
        batch_size=settings.prediction_log_batch_size,
        flush_interval=settings.prediction_log_flush_interval,
        on_drop=metrics.count_dropped,
        write_timeout=settings.prediction_log_write_timeout,
        spool=spool,
        shadow_queue_size=settings.shadow_queue_size,
        on_shadow_drop=lambda _reason, rows: metrics.shadow.labels("dropped").inc(rows),
    )


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the log writer and the model lifecycle; never wait on the registry.

    A bundle on disk (MODEL_PATH) is tried once before serving (local I/O, about a second),
    so a healthy worker is ready when it starts; a registry model (MODEL_URI) loads only in
    the background (app.lifecycle), so /health answers at once while /ready stays 503 with
    the reason until a verified model is in. Either way failed loads are retried with
    backoff. With MODEL_REQUIRED=true a bundle on disk that cannot be served stops start-up
    instead of leaving a worker that is never ready.
    """
    settings: Settings = app.state.settings
    configure_logging(settings.log_level)
    service = ModelService(
        settings, app.state.metrics, _log_writer(settings, app.state.metrics), loader=load_checked
    )
    lifecycle = ModelLifecycle(service, settings)
    app.state.service = service
    app.state.lifecycle = lifecycle
    with bounded_registry_calls(settings.registry_timeout):
        if service.log_writer is not None:
            await asyncio.to_thread(service.log_writer.prepare)
        service.start()
        loaded = settings.model_uri is None and await lifecycle.first_load()
        if settings.model_required and settings.model_uri is None and not loaded:
            await asyncio.to_thread(service.stop)
            raise RuntimeError(
                f"MODEL_REQUIRED=true and the model cannot be served: {service.last_error} "
                f"({settings.model_path}; the log has the detail)"
            )
        tasks = [asyncio.create_task(lifecycle.run(), name="model-lifecycle")]
        if settings.model_watch_interval > 0:
            tasks.append(asyncio.create_task(watch(lifecycle, settings.model_watch_interval)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # a registry call still running in its thread keeps the bounds it started with
            await service.settle(timeout=3 * settings.registry_timeout)
            await lifecycle.stop()
            logger.info("shutting down: flushing the prediction log")
            await asyncio.to_thread(service.stop)
            # Access lines and metrics still due; uvicorn's lines after this are written at once.
            flush_all_and_stop_deferring()
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
    app.include_router(v2_router)
    # the API's own routes, for labelling requests
    routes = [*router.routes, *v2_router.routes]
    if settings.admin_enabled:
        app.include_router(admin_router)
        routes += admin_router.routes
    if settings.webhook_enabled:
        app.include_router(hooks_router)
        routes += hooks_router.routes
    if settings.docs_enabled:
        add_docs(app)
    # Innermost: inside CORS and the request middleware, so both apply to it unchanged.
    app.add_middleware(PredictFastPath, state=app.state, routes=router.routes)
    app.add_middleware(V2InferFastPath, state=app.state, routes=v2_router.routes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Authorization", "X-Request-ID"],
        )
    app.add_middleware(
        RequestMiddleware,
        metrics=app.state.metrics,
        max_body_bytes=settings.max_body_bytes,
        routes=routes,
    )
    app.openapi = custom_openapi(app)  # type: ignore[method-assign]
    return app


app = create_app()
