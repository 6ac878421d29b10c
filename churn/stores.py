"""Where the stores live by default, written once, and the rule that reading never creates one.

Training, serving, the watcher and the monitoring jobs all fall back to the same two embedded
SQLite stores when no URL is configured; they import the defaults from here so the names
cannot drift apart. SQLite creates a missing database file on connect, so a reader that is
given a mistyped path would silently read an empty, brand-new store and conclude "nothing
there": :func:`require_existing_sqlite` refuses that before anything connects.
"""

from __future__ import annotations

from pathlib import Path

# MLflow tracking and registry store (config.yaml's mlflow.tracking_uri defaults to it).
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# The API's prediction log (DATABASE_URL), read by the drift job and the closed loop.
DEFAULT_PREDICTION_LOG_URL = "sqlite:///prediction_log.db"


class StoreNotFoundError(LookupError):
    """A store that should be read does not exist; the message names the file."""


def sqlite_file(database_url: str) -> Path | None:
    """The database file a SQLite URL names; None for other databases and in-memory SQLite."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(database_url)
    except ArgumentError:
        return None
    if not url.drivername.startswith("sqlite"):
        return None
    database = url.database or ""
    if database in {"", ":memory:"} or database.startswith("file::memory:"):
        return None
    if database.startswith("file:"):  # a sqlite3 URI filename (uri=true)
        database = database.removeprefix("file:").split("?", 1)[0]
    return Path(database)


def require_existing_sqlite(database_url: str, role: str) -> None:
    """Refuse to read a SQLite store whose file does not exist (connecting would create it)."""
    path = sqlite_file(database_url)
    if path is not None and not path.is_file():
        raise StoreNotFoundError(
            f"{path}: {role} not found (no such SQLite file; check the URL, reading never "
            "creates a store)"
        )
