"""MLflow tracking and registry helpers (MLflow 3: aliases, never the deprecated stages)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churn.bundle import FROM_ENVIRONMENT, METADATA_FILE, KeyChoice, ModelBundle, load_bundle

BUNDLE_ARTIFACT_PATH = "bundle"
ARCHIVED_TAG = "archived"
_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


class RegistryError(RuntimeError):
    """The registry does not hold what was asked for."""


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


def describe(mlflow_client: Any, name: str, version: str | int) -> VersionInfo:
    from mlflow.exceptions import MlflowException

    try:
        mv = mlflow_client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"model '{name}' has no version {version}") from None
    run = mlflow_client.get_run(mv.run_id)
    return VersionInfo(
        name=name,
        version=str(mv.version),
        run_id=mv.run_id,
        aliases=list(mv.aliases or []),
        tags=dict(mv.tags or {}),
        metrics=dict(run.data.metrics),
    )


def latest_version(mlflow_client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        versions = mlflow_client.search_model_versions(f"name='{name}'")
    except MlflowException:
        versions = []
    if not versions:
        raise RegistryError(f"model '{name}' has no registered versions; run train.py first")
    return str(max(int(v.version) for v in versions))


def version_by_alias(mlflow_client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow_client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


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
