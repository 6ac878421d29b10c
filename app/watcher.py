"""Registry (or disk) watcher: reload when the production model changes.

Every MODEL_WATCH_INTERVAL seconds it asks which version ``models:/<name>@<alias>`` resolves
to (or, for MODEL_PATH, what the bundle's metadata says) and reloads when that changed. A
version that failed to load is not retried until the source changes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

from app.service import ModelService, ReloadError
from app.settings import Settings
from churn.bundle import SIGNATURE_FILE, BundleError, bundle_directory, read_metadata
from churn.stores import DEFAULT_TRACKING_URI

logger = logging.getLogger("app.watcher")


def source_fingerprint(settings: Settings) -> str:
    """What the configured source currently points at (blocking: call in a thread)."""
    if settings.model_uri:
        from churn.registry import client, resolve_version

        tracking = settings.mlflow_tracking_uri or DEFAULT_TRACKING_URI
        return f"{settings.model_uri}#{resolve_version(client(tracking), settings.model_uri)}"
    metadata = read_metadata(Path(settings.model_path))
    # The signature too: a bundle copied metadata-first is caught again once it is signed.
    signature = bundle_directory(Path(settings.model_path)) / SIGNATURE_FILE
    signed = signature.read_text(errors="replace") if signature.exists() else None
    return json.dumps(
        [metadata.get("model_version"), metadata.get("files"), signed], sort_keys=True
    )


async def _fingerprint(settings: Settings) -> str | None:
    try:
        return await asyncio.to_thread(source_fingerprint, settings)
    except (BundleError, OSError, RuntimeError, ValueError) as exc:
        logger.warning("model watcher cannot read the source: %s", exc)
        return None
    except Exception as exc:  # registry client errors (MlflowException, connection errors)
        logger.warning("model watcher cannot reach the registry: %s", exc)
        return None


async def watch(service: ModelService, interval: float) -> None:
    """Poll forever (cancelled at shutdown)."""
    seen = await _fingerprint(service.settings) if service.model is not None else None
    while True:
        await asyncio.sleep(interval)
        current = await _fingerprint(service.settings)
        if current is None or current == seen:
            continue
        seen = current
        logger.info("model source changed; reloading", extra={"source": current})
        # A failure is logged and counted by the service; the old model keeps serving.
        with contextlib.suppress(ReloadError):
            await service.load()
