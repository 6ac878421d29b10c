"""Registry (or disk) watcher: reload when the production model changes, follow the rollout.

Every MODEL_WATCH_INTERVAL seconds it asks which version ``models:/<name>@<alias>`` resolves
to (or, for MODEL_PATH, what the bundle's metadata says) and reloads when that is not what
this worker serves. A version that failed to load is not retried until the source changes
again, unless it failed because the registry was unreachable: an outage (the tracking server
stopped mid-reload) says nothing about the version, so the next tick tries again. Each tick
also re-checks that the served version is its alias's target (the ``model_alias_mismatch``
gauge), and follows ``@challenger`` and its rollout record (app.rollout).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from app.lifecycle import ModelLifecycle
from app.model import ServedModel
from app.service import ReloadError
from app.settings import Settings
from app.source import REGISTRY_UNREACHABLE, tracking_uri
from churn.bundle import SIGNATURE_FILE, BundleError, bundle_directory, read_metadata
from churn.redact import redact

logger = logging.getLogger("app.watcher")


def source_fingerprint(settings: Settings) -> str:
    """What the configured source currently points at (blocking: call in a thread)."""
    if settings.model_uri:
        from churn.registry import client, resolve_version

        tracking = tracking_uri(settings) or ""
        return f"{settings.model_uri}#{resolve_version(client(tracking), settings.model_uri)}"
    metadata = read_metadata(Path(settings.model_path))
    return _bundle_fingerprint(metadata.get("model_version"), metadata.get("files"))


def served_fingerprint(settings: Settings, model: ServedModel) -> str:
    """The fingerprint `source_fingerprint` gives while the source holds the served model."""
    if settings.model_uri:
        return f"{settings.model_uri}#{model.version}"
    return _bundle_fingerprint(model.metadata.get("model_version"), model.metadata.get("files"))


def _bundle_fingerprint(version: object, files: object) -> str:
    return json.dumps([version, files], sort_keys=True)


def signature_of(settings: Settings) -> str:
    """The bundle's signature file as it is now (blocking): a bundle copied metadata-first
    fails to load once, and is tried again when its signature arrives."""
    if settings.model_uri:
        return ""
    path = bundle_directory(Path(settings.model_path)) / SIGNATURE_FILE
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


async def _fingerprint(settings: Settings) -> str | None:
    try:
        return await asyncio.to_thread(source_fingerprint, settings)
    except (BundleError, OSError, RuntimeError, ValueError) as exc:
        logger.warning("model watcher cannot read the source: %s", redact(exc))
        return None
    except Exception as exc:  # registry client errors (MlflowException, connection errors)
        logger.warning("model watcher cannot reach the registry: %s", redact(exc))
        return None


async def watch(lifecycle: ModelLifecycle, interval: float) -> None:
    """Poll forever (cancelled at shutdown)."""
    settings = lifecycle.settings
    failed: str | None = None
    while True:
        await asyncio.sleep(interval)
        model = lifecycle.service.model
        if model is None:
            continue  # the lifecycle is still loading (and retrying) the first model
        current = await _fingerprint(settings)
        changed = current is not None and current != served_fingerprint(settings, model)
        attempt = f"{current}|{await asyncio.to_thread(signature_of, settings)}"
        if changed and attempt != failed:
            logger.info("model source changed; reloading", extra={"source": redact(current)})
            try:
                await lifecycle.reload_here()
                failed = None
            except ReloadError as exc:
                # Logged and counted by the service; the old model serves. A bad version is
                # not tried again; a registry outage is (each try is one bounded request).
                failed = None if exc.reason == REGISTRY_UNREACHABLE else attempt
        await lifecycle.check_alias()
        served = lifecycle.service.model
        if served is not None:
            # @challenger and its record: a record change applies without loading anything
            await lifecycle.service.rollout.sync(served)
