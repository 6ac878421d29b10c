"""The paired reader: a served batch joined with what the other model said about it, per row,
with feedback, on SQLite and the real PostgreSQL.

Served batches and shadow scores go in through the log writer's own insert (write_log), as the
API's writer thread stores them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from churn.prediction_log import (
    PAIRED_COLUMNS,
    PredictionBatch,
    ShadowBatch,
    create_tables,
    make_engine,
    prediction_ids,
    read_paired,
    record_feedback,
    write_log,
)
from tests.mlflow_server import postgres_database

FEATURES = {"tenure": [1.0, 24.0, 60.0], "contract_type": ["Month-to-month", "One year", None]}
_counter = iter(range(1, 10_000))


def batch_id(age: float = 0.0) -> str:
    millis = int((time.time() - age) * 1000)
    return f"{millis:012x}{next(_counter):016x}"


def served(
    version: str, probabilities: list[float], tiers: list[str], age: float = 0.0
) -> PredictionBatch:
    n = len(probabilities)
    return PredictionBatch(
        batch_id=batch_id(age),
        created_at=time.time() - age,
        model_version=version,
        columns={name: values[:n] for name, values in FEATURES.items()},
        probabilities=probabilities,
        tiers=tiers,
    )


def shadow(
    batch: PredictionBatch, version: str, probabilities: list[float], tiers: list[str]
) -> ShadowBatch:
    return ShadowBatch(
        batch_id=batch.batch_id,
        created_at=batch.created_at,
        model_version=version,
        served_version=batch.model_version,
        probabilities=probabilities,
        tiers=tiers,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.db'}"
    else:
        with postgres_database("rollout_log") as url:
            yield url


def test_pairs_are_joined_per_row_with_feedback(log_url: str) -> None:
    shadowed = served("1", [0.1, 0.8, 0.5], ["LOW", "HIGH", "MEDIUM"])  # champion answered
    canary = served("2", [0.9, 0.2], ["HIGH", "LOW"])  # challenger answered
    alone = served("1", [0.3], ["LOW"])  # no shadow row: not a pair
    other = served("1", [0.4], ["LOW"])  # shadowed by another version
    torn = served("1", [0.4, 0.6, 0.7], ["LOW", "MEDIUM", "MEDIUM"])  # row counts differ
    old = served("1", [0.2], ["LOW"], age=7200)  # before the window
    engine = make_engine(log_url)
    try:
        create_tables(engine)
        write_log(  # the log writer's own insert: served batches and shadow scores
            engine,
            [
                old,
                shadowed,
                canary,
                alone,
                other,
                torn,
                shadow(shadowed, "2", [0.2, 0.7, 0.45], ["LOW", "MEDIUM", "MEDIUM"]),
                shadow(canary, "1", [0.85, 0.3], ["HIGH", "LOW"]),
                shadow(other, "3", [0.5], ["MEDIUM"]),
                shadow(torn, "2", [0.4, 0.6], ["LOW", "MEDIUM"]),
                shadow(old, "2", [0.25], ["LOW"]),
            ],
        )
        record_feedback(engine, shadowed.ids[0], False)
        record_feedback(engine, shadowed.ids[2], True)
        record_feedback(engine, canary.ids[1], True)
        record_feedback(engine, alone.ids[0], True)  # not a pair: not read
    finally:
        engine.dispose()

    since = datetime.now(UTC) - timedelta(hours=1)
    frame = read_paired(log_url, champion="1", challenger="2", since=since)
    assert list(frame.columns[:9]) == PAIRED_COLUMNS[:9]
    assert frame.columns[-1] == "outcome"
    assert set(frame.columns) >= set(FEATURES)
    assert frame["prediction_id"].tolist() == prediction_ids(shadowed.batch_id, 3) + prediction_ids(
        canary.batch_id, 2
    )
    assert frame["served_role"].tolist() == ["champion"] * 3 + ["challenger"] * 2
    assert frame["served_version"].tolist() == ["1", "1", "1", "2", "2"]
    assert frame["champion_probability"].tolist() == [0.1, 0.8, 0.5, 0.85, 0.3]
    assert frame["challenger_probability"].tolist() == [0.2, 0.7, 0.45, 0.9, 0.2]
    assert frame["champion_tier"].tolist() == ["LOW", "HIGH", "MEDIUM", "HIGH", "LOW"]
    assert frame["challenger_tier"].tolist() == ["LOW", "MEDIUM", "MEDIUM", "HIGH", "LOW"]
    np.testing.assert_array_equal(frame["outcome"], [0.0, np.nan, 1.0, np.nan, 1.0])
    assert frame["tenure"].tolist() == [1.0, 24.0, 60.0, 1.0, 24.0]
    assert frame.attrs["unpaired"] == 1

    everything = read_paired(log_url, champion="1", challenger="2")
    assert len(everything) == 6  # the old pair too
    assert read_paired(log_url, champion="1", challenger="9").empty


def test_an_empty_or_missing_log_reads_as_no_pairs(tmp_path: Path) -> None:
    frame = read_paired(f"sqlite:///{tmp_path / 'empty.db'}", "1", "2")
    assert frame.empty and list(frame.columns) == [c for c in PAIRED_COLUMNS]
