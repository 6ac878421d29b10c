"""Default store URLs are defined once, and reading a SQLite store never creates it."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings
from churn.config import MlflowConfig
from churn.stores import (
    DEFAULT_PREDICTION_LOG_URL,
    DEFAULT_TRACKING_URI,
    StoreNotFoundError,
    require_existing_sqlite,
    sqlite_file,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///prediction_log.db", Path("prediction_log.db")),
        ("sqlite:////var/lib/log.db", Path("/var/lib/log.db")),
        ("sqlite+pysqlite:///x/y.db", Path("x/y.db")),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("postgresql+psycopg2://u:p@localhost/churn", None),
        ("not a url", None),
    ],
)
def test_sqlite_file(url: str, expected: Path | None) -> None:
    assert sqlite_file(url) == expected


def test_a_missing_sqlite_file_is_refused_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nested" / "log.db"
    with pytest.raises(StoreNotFoundError, match=r"log\.db: prediction log not found"):
        require_existing_sqlite(f"sqlite:///{missing}", "prediction log")
    assert not missing.parent.exists()
    present = tmp_path / "present.db"
    present.write_bytes(b"")
    require_existing_sqlite(f"sqlite:///{present}", "prediction log")
    require_existing_sqlite("postgresql://localhost/churn", "prediction log")  # not SQLite


def test_the_defaults_are_the_ones_in_use() -> None:
    assert Settings.model_fields["database_url"].default == DEFAULT_PREDICTION_LOG_URL
    assert MlflowConfig().tracking_uri == DEFAULT_TRACKING_URI
