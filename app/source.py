"""Where the served model comes from: what the registry and release.json say, and why a
load failed, in words a client may read.

Exception text from the registry client quotes URLs (with their user info) and internals, so
it never reaches a response: a load failure becomes one of a few stable reasons below, and
its detail goes to the log through `churn.redact.redact`. The registry is asked directly here
so that "cannot reach the registry" and "the alias does not exist" stay two answers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings
from churn.bundle import METADATA_FILE, BundleError, bundle_directory
from churn.redact import redact
from churn.stores import DEFAULT_TRACKING_URI

STILL_LOADING = "the model is still loading"
REGISTRY_UNREACHABLE = "model registry unreachable"
REGISTRY_REFUSED = "model registry refused the credentials"
VERIFICATION_FAILED = "bundle failed verification"
NO_BUNDLE = "no model bundle at MODEL_PATH"
LOAD_FAILED = "the model failed to load"

# MLflow error codes that mean "asked fine, the thing is not there".
_REFUSED_CODES = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED"})

RELEASE_FILE = "release.json"

logger = logging.getLogger("app.source")


def no_alias(name: str, alias: str) -> str:
    return f"no model version with alias '{alias}' (model '{name}')"


class RegistryProblem(RuntimeError):
    """The registry could not answer (str: a stable reason; the cause holds the detail)."""


def tracking_uri(settings: Settings) -> str | None:
    """The registry the API may ask: MLFLOW_TRACKING_URI, or MLflow's local default when
    MODEL_URI names a registry model; None when nothing points at a registry."""
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    return DEFAULT_TRACKING_URI if settings.model_uri else None


def alias_target(tracking: str, name: str, alias: str) -> str | None:
    """The version `name@alias` points at; None when the alias (or model) does not exist.

    Raises RegistryProblem when the registry cannot say (unreachable, refused, 5xx): an error
    is never read as "no such alias". Blocking: call it in a thread.
    """
    from mlflow.exceptions import MlflowException

    from churn.registry import client, is_absent

    try:
        return str(client(tracking).get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if is_absent(exc):  # the one rule for "genuinely absent" (churn.registry)
            return None
        if exc.error_code in _REFUSED_CODES:
            raise RegistryProblem(REGISTRY_REFUSED) from exc
        raise RegistryProblem(REGISTRY_UNREACHABLE) from exc
    except Exception as exc:  # connection errors of the HTTP stack, a locked SQLite store
        raise RegistryProblem(REGISTRY_UNREACHABLE) from exc


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def describe(exc: BaseException) -> str:
    """The whole story of a failure for the log: every chained exception's text, redacted."""
    texts: list[str] = []
    for link in _chain(exc):
        text = f"{type(link).__name__}: {link}"
        if str(link) and not any(str(link) in t for t in texts):
            texts.append(text)
    return redact(" <- ".join(texts))


def failure_reason(exc: BaseException, settings: Settings) -> str:
    """The stable, client-safe reason for a failed load (never the exception's text)."""
    chain = list(_chain(exc))
    for link in chain:
        if isinstance(link, RegistryProblem):
            return str(link)
    bundle_error = any(isinstance(link, BundleError) for link in chain)
    if settings.model_uri:
        if bundle_error:
            return VERIFICATION_FAILED
        return REGISTRY_UNREACHABLE if _is_network(chain) else LOAD_FAILED
    if not (bundle_directory(Path(settings.model_path)) / METADATA_FILE).exists():
        return NO_BUNDLE
    return VERIFICATION_FAILED if bundle_error else LOAD_FAILED


def _is_network(chain: list[BaseException]) -> bool:
    import requests
    from mlflow.exceptions import MlflowException

    from churn.registry import is_absent

    return any(
        isinstance(link, (OSError, requests.RequestException))
        or (isinstance(link, MlflowException) and not is_absent(link))
        for link in chain
    )


def probe_registry(settings: Settings) -> None:
    """Before fetching a models:/name@alias bundle, ask the registry for the alias.

    Raises RegistryProblem with a stable reason: unreachable / refused, or no such alias.
    """
    from churn.registry import parse_models_uri

    if not settings.model_uri:
        return
    name, alias, _ = parse_models_uri(settings.model_uri)
    tracking = tracking_uri(settings)
    if alias is None or tracking is None:
        return
    if alias_target(tracking, name, alias) is None:
        raise RegistryProblem(no_alias(name, alias))


# MLflow's HTTP client retries a refused connection for minutes by default (7 retries, backoff
# factor 2) and waits 120 s per request; the API retries on its own schedule instead.
_HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


@contextlib.contextmanager
def bounded_registry_calls(timeout: float) -> Iterator[None]:
    """Bound MLflow's HTTP retries and per-request timeout for this process (values the
    operator set in the environment win), restoring the environment on exit."""
    wanted = {**_HTTP_BOUNDS, "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, round(timeout)))}
    added = [name for name in wanted if name not in os.environ]
    for name in added:
        os.environ[name] = wanted[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@dataclass(frozen=True)
class Release:
    """Which registry alias the served bundle stands for (None: not known)."""

    model_name: str
    alias: str | None
    version: str
    promoted_at: str | None = None


def served_release(settings: Settings, name: str, version: str) -> Release:
    """The alias behind the model just loaded: MODEL_URI's alias, else the ``release.json``
    that promotion writes beside the exported bundle (when it describes this very version).
    Blocking: call it in a thread."""
    from churn.registry import parse_models_uri

    if settings.model_uri:
        uri_name, alias, _ = parse_models_uri(settings.model_uri)
        return Release(model_name=uri_name, alias=alias, version=version)
    path = bundle_directory(Path(settings.model_path)) / RELEASE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return Release(model_name=name, alias=None, version=version)
    except (OSError, ValueError) as exc:
        logger.warning("%s is unreadable (%s); the served alias is unknown", path, exc)
        return Release(model_name=name, alias=None, version=version)
    if not isinstance(raw, dict) or str(raw.get("version")) != version:
        logger.warning(
            "%s describes version %s but the bundle is version %s; the served alias is unknown",
            path,
            raw.get("version") if isinstance(raw, dict) else None,
            version,
        )
        return Release(model_name=name, alias=None, version=version)
    alias = raw.get("alias")
    return Release(
        model_name=str(raw.get("model_name") or name),
        alias=str(alias) if alias else None,
        version=version,
        promoted_at=str(raw["promoted_at"]) if raw.get("promoted_at") else None,
    )
