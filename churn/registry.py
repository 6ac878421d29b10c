"""MLflow tracking and registry helpers (MLflow 3: aliases, never the deprecated stages).

Every registry call here tells "the registry answered: no such thing" (None, or a
RegistryError) from "the registry could not be asked" (RegistryUnavailable: connection
refused, timeouts, HTTP 5xx): an outage must never read as "no production model".
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from churn.bundle import FROM_ENVIRONMENT, METADATA_FILE, KeyChoice, ModelBundle, load_bundle
from churn.redact import redact

BUNDLE_ARTIFACT_PATH = "bundle"
ARCHIVED_TAG = "archived"
_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
# MLflow's error codes for "the registry holds no such model, version or alias". MLflow 3.17
# answers an unknown alias of an existing model with INVALID_PARAMETER_VALUE ("Registered model
# alias X not found."), the same code it uses for a malformed name, so that one also needs
# the message to say "not found".
_ABSENT = "RESOURCE_DOES_NOT_EXIST"
_ABSENT_IF_NOT_FOUND = "INVALID_PARAMETER_VALUE"
# Promotion CLIs fail within seconds on an outage instead of MLflow's ~4 minutes of retries.
BOUNDED_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
LOCK_SUFFIX = ".promotion-lock"
# A promotion takes seconds; a lock this old was left by a process that died holding it.
LOCK_STALE_AFTER = timedelta(minutes=15)

T = TypeVar("T")


class RegistryError(RuntimeError):
    """The registry does not hold what was asked for (or cannot be asked: see below)."""


class RegistryUnavailable(RegistryError):
    """The registry could not answer: unreachable, timed out, or a server error."""


class PromotionLocked(RegistryError):
    """Another promotion or rollback of the same model holds the registry lock."""


def is_absent(exc: BaseException) -> bool:
    """True when MLflow answered that the model, version or alias does not exist."""
    code = getattr(exc, "error_code", None)
    if code == _ABSENT:
        return True
    return code == _ABSENT_IF_NOT_FOUND and "not found" in str(exc).lower()


def unavailable(what: str, exc: BaseException) -> RegistryUnavailable:
    """A one-line, credential-free RegistryUnavailable for a failed registry call."""
    detail = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
    return RegistryUnavailable(f"registry error while {what}: {detail[:300]}")


def registry_call(what: str, fn: Callable[[], T]) -> T:
    """Run one registry call; any failure to get an answer becomes RegistryUnavailable."""
    from mlflow.exceptions import MlflowException

    try:
        return fn()
    except (MlflowException, OSError) as exc:
        raise unavailable(what, exc) from None


@contextlib.contextmanager
def bounded_http_retries() -> Iterator[None]:
    """Bound MLflow's HTTP retries and timeout for the duration (unless the caller set them)."""
    saved = {name: os.environ.get(name) for name in BOUNDED_HTTP}
    for name, value in BOUNDED_HTTP.items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    run_id: str
    aliases: list[str]
    tags: dict[str, str]
    metrics: dict[str, float]


def client(tracking_uri: str) -> Any:
    """A client bound to one store; no process-wide MLflow state is touched."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@contextlib.contextmanager
def tracking_to(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (start_run, log_model) at a store, then put things back.

    `mlflow.set_tracking_uri` / `set_registry_uri` also export MLFLOW_TRACKING_URI and
    MLFLOW_REGISTRY_URI to the environment, which would otherwise outlive the call and silently
    redirect every later caller in the process and every subprocess it starts.
    """
    import mlflow

    saved_env = {name: os.environ.get(name) for name in _URI_VARIABLES}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        # None (untyped in MLflow, supported) means "resolve from the environment" again.
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        mlflow.set_registry_uri(None)  # type: ignore[arg-type]
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def model_version(mlflow_client: Any, name: str, version: str | int) -> Any:
    """One registered version (MLflow's ModelVersion, tags included); RegistryError if the
    registry says it does not exist, RegistryUnavailable if it could not answer."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version(name, str(version))
    except MlflowException as exc:
        if is_absent(exc):
            raise RegistryError(f"model '{name}' has no version {version}") from None
        raise unavailable(f"reading {name} v{version}", exc) from None
    except OSError as exc:
        raise unavailable(f"reading {name} v{version}", exc) from None


def describe(mlflow_client: Any, name: str, version: str | int) -> VersionInfo:
    """A version with its run's metrics; RegistryError if absent, RegistryUnavailable if unsure."""
    mv = model_version(mlflow_client, name, version)
    run = registry_call(
        f"reading run {mv.run_id} of {name} v{version}", lambda: mlflow_client.get_run(mv.run_id)
    )
    return VersionInfo(
        name=name,
        version=str(mv.version),
        run_id=mv.run_id,
        aliases=list(mv.aliases or []),
        tags=dict(mv.tags or {}),
        metrics=dict(run.data.metrics),
    )


def latest_version(mlflow_client: Any, name: str) -> str:
    """The highest registered version of `name`; RegistryError when there is none."""
    versions = registry_call(
        f"listing versions of {name}",
        lambda: mlflow_client.search_model_versions(f"name='{name}'"),
    )
    if not versions:
        raise RegistryError(f"model '{name}' has no registered versions; run train.py first")
    return str(max(int(v.version) for v in versions))


def version_by_alias(mlflow_client: Any, name: str, alias: str) -> str | None:
    """The version `alias` points at; None only when the registry says there is no such alias.

    Any other failure (connection refused, timeout, HTTP 5xx) raises RegistryUnavailable: a
    registry outage must not read as "no production model" (which skips the gate's bar).
    """
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow_client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if is_absent(exc):
            return None
        raise unavailable(f"reading {name}@{alias}", exc) from None
    except OSError as exc:
        raise unavailable(f"reading {name}@{alias}", exc) from None


def registered_model_tags(mlflow_client: Any, name: str) -> dict[str, str]:
    """The registered model's tags ({} when the model does not exist yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(mlflow_client.get_registered_model(name).tags or {})
    except MlflowException as exc:
        if is_absent(exc):
            return {}
        raise unavailable(f"reading model {name}", exc) from None
    except OSError as exc:
        raise unavailable(f"reading model {name}", exc) from None


# --------------------------------------------------------------------------- promotion lock


def _lock_holder(mlflow_client: Any, lock_name: str) -> dict[str, str] | None:
    """The lock's tags, or None when nobody holds it."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(mlflow_client.get_registered_model(lock_name).tags or {})
    except MlflowException as exc:
        if is_absent(exc):
            return None
        raise unavailable(f"reading the lock {lock_name}", exc) from None
    except OSError as exc:
        raise unavailable(f"reading the lock {lock_name}", exc) from None


def _held_since(holder: dict[str, str]) -> datetime | None:
    try:
        return datetime.fromisoformat(holder.get("acquired_at", ""))
    except ValueError:
        return None


def _try_create_lock(mlflow_client: Any, lock_name: str, tags: dict[str, str]) -> bool:
    """Create the lock model; False when it already exists (someone else holds the lock)."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.create_registered_model(
            lock_name,
            tags=tags,
            description="Held while a promotion or rollback runs; deleted when it ends.",
        )
    except MlflowException as exc:
        # RESOURCE_DOES_NOT_EXIST: the holder deleted it between our insert and MLflow's re-read.
        if exc.error_code in {"RESOURCE_ALREADY_EXISTS", _ABSENT}:
            return False
        raise unavailable(f"taking the lock {lock_name}", exc) from None
    except OSError as exc:
        raise unavailable(f"taking the lock {lock_name}", exc) from None
    return True


@contextlib.contextmanager
def promotion_lock(mlflow_client: Any, name: str, purpose: str) -> Iterator[str]:
    """Hold the registry-wide lock on promoting `name` for the duration; yield its token.

    The lock is a registered model named `<name>.promotion-lock`: creating a registered model
    is an insert under a unique key in MLflow's store, so of two promotions racing for it
    exactly one succeeds, whatever the backend (sqlite, PostgreSQL, or a tracking server in
    front of either). The loser gets PromotionLocked at once, never a half-done promotion. A
    lock older than LOCK_STALE_AFTER was left by a process that died and is broken.
    """
    lock_name = f"{name}{LOCK_SUFFIX}"
    token = uuid.uuid4().hex
    now = datetime.now(UTC)
    tags = {
        "token": token,
        "holder": f"{socket.gethostname()}:{os.getpid()}",
        "purpose": purpose,
        "acquired_at": now.isoformat(timespec="seconds"),
    }
    if not _try_create_lock(mlflow_client, lock_name, tags):
        holder = _lock_holder(mlflow_client, lock_name) or {}
        since = _held_since(holder)
        stale = since is not None and now - since > LOCK_STALE_AFTER
        if not stale or not _break_stale_lock(mlflow_client, lock_name, holder):
            raise PromotionLocked(
                f"another promotion of '{name}' is in progress ({holder.get('purpose', '?')} "
                f"by {holder.get('holder', '?')} since {holder.get('acquired_at', '?')}); "
                "nothing was changed, try again when it has finished"
            )
        if not _try_create_lock(mlflow_client, lock_name, tags):
            raise PromotionLocked(
                f"another promotion of '{name}' took the lock first; nothing was changed"
            )
    try:
        yield token
    finally:
        _release(mlflow_client, lock_name, token)


def _break_stale_lock(mlflow_client: Any, lock_name: str, seen: dict[str, str]) -> bool:
    """Delete a stale lock, unless someone replaced it since we looked (its token changed)."""
    current = _lock_holder(mlflow_client, lock_name)
    if current is None:
        return True
    if current.get("token") != seen.get("token"):
        return False
    registry_call(
        f"breaking the stale lock {lock_name}",
        lambda: mlflow_client.delete_registered_model(lock_name),
    )
    return True


def _release(mlflow_client: Any, lock_name: str, token: str) -> None:
    """Delete the lock if it is still ours; a failure leaves it to go stale (never raises)."""
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException, OSError, RegistryError):
        holder = _lock_holder(mlflow_client, lock_name)
        if holder is not None and holder.get("token") == token:
            mlflow_client.delete_registered_model(lock_name)


# --------------------------------------------------------------------------- bundles of runs


def fetch_run_bundle(tracking_uri: str, run_id: str, destination: Path) -> Path:
    """Download the `bundle/` artifacts of a run into `destination`; return the bundle dir.

    Only downloads: the caller verifies it with `churn.bundle.load_bundle` before any use.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    destination.mkdir(parents=True, exist_ok=True)
    what = f"downloading the {BUNDLE_ARTIFACT_PATH}/ artifacts of run {run_id}"
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=BUNDLE_ARTIFACT_PATH,
                dst_path=str(destination),
                tracking_uri=tracking_uri,
            )
        )
    except MlflowException as exc:
        if is_absent(exc):
            local = destination / BUNDLE_ARTIFACT_PATH
        else:
            raise unavailable(what, exc) from None
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            local = destination / BUNDLE_ARTIFACT_PATH
        else:
            raise unavailable(what, exc) from None
    if not (local / METADATA_FILE).is_file():
        raise RegistryError(
            f"run {run_id} has no '{BUNDLE_ARTIFACT_PATH}/{METADATA_FILE}' artifact: "
            "it was not trained by train.py, or its upload did not finish"
        )
    return local


def read_json_artifact(tracking_uri: str, run_id: str, artifact_path: str) -> dict[str, Any]:
    """One JSON artifact of a run, parsed."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = registry_call(
            f"downloading {artifact_path} of run {run_id}",
            lambda: mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=artifact_path,
                dst_path=tmp,
                tracking_uri=tracking_uri,
            ),
        )
        return dict(json.loads(Path(local).read_text(encoding="utf-8")))


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """'models:/name@alias' or 'models:/name/3' -> (name, alias, version)."""
    if not uri.startswith("models:/"):
        raise RegistryError(f"'{uri}' is not a models:/ URI (models:/<name>@<alias> or /<version>)")
    rest = uri.removeprefix("models:/").strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        return name, None, version
    raise RegistryError(f"'{uri}' names no alias or version")


def resolve_version(mlflow_client: Any, uri: str) -> str:
    name, alias, version = parse_models_uri(uri)
    if alias is not None:
        resolved = version_by_alias(mlflow_client, name, alias)
        if resolved is None:
            raise RegistryError(f"model '{name}' has no version with alias '{alias}'")
        return resolved
    return str(version)


def download_bundle(
    tracking_uri: str,
    uri: str,
    destination: Path | None = None,
    *,
    key: KeyChoice = FROM_ENVIRONMENT,
) -> ModelBundle:
    """Fetch the bundle logged with the run behind a models:/ URI, verify it and load it.

    Without `destination` the files go to a temporary directory that is removed once the
    bundle is in memory, so a watcher reloading every minute leaves nothing behind. With
    `destination` the files stay there (the caller wants them, e.g. the metadata).
    """
    if destination is not None:
        return _download_and_load(tracking_uri, uri, destination, key)
    with tempfile.TemporaryDirectory(prefix="churn-bundle-") as tmp:
        return _download_and_load(tracking_uri, uri, Path(tmp), key)


def _download_and_load(tracking_uri: str, uri: str, target: Path, key: KeyChoice) -> ModelBundle:
    import mlflow

    mlflow_client = client(tracking_uri)
    name, _, _ = parse_models_uri(uri)
    version = resolve_version(mlflow_client, uri)
    run_id = mlflow_client.get_model_version(name, version).run_id
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id,
        artifact_path=BUNDLE_ARTIFACT_PATH,
        dst_path=str(target),
        tracking_uri=tracking_uri,
    )
    path = Path(local)
    if not (path / METADATA_FILE).exists():
        raise RegistryError(
            f"run {run_id} of {name} v{version} has no '{BUNDLE_ARTIFACT_PATH}/' artifacts"
        )
    return load_bundle(path, key=key)
