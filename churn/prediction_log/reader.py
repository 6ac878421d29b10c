"""Reading the log: feedback by prediction id, and the log as one row per prediction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import SQLAlchemyError

from churn.prediction_log.ids import prediction_ids, split_prediction_id
from churn.prediction_log.schema import (
    PredictionLogError,
    feedback,
    make_engine,
    prediction_batches,
)


def prediction_exists(engine: Engine, prediction_id: str) -> bool:
    where = split_prediction_id(prediction_id)
    if where is None:
        return False
    batch_id, index = where
    with engine.connect() as conn:
        rows = conn.execute(
            select(prediction_batches.c.rows).where(prediction_batches.c.batch_id == batch_id)
        ).scalar()
    return rows is not None and index < rows


def record_feedback(engine: Engine, prediction_id: str, outcome: bool) -> None:
    """Store (or replace) the true outcome of a prediction."""
    where = split_prediction_id(prediction_id)
    if where is None:
        raise ValueError(f"{prediction_id!r} is not a prediction id")
    with engine.begin() as conn:
        conn.execute(delete(feedback).where(feedback.c.prediction_id == prediction_id))
        conn.execute(
            insert(feedback).values(
                prediction_id=prediction_id,
                batch_id=where[0],
                outcome=int(outcome),
                received_at=datetime.now(UTC),
            )
        )


# The columns of read_predictions' frame besides the features: the one list the monitoring
# jobs need to tell features from log fields (the target's name in training data is the
# config's data.target_column; here the true outcome is OUTCOME_COLUMN).
PROBABILITY_COLUMN = "probability"
OUTCOME_COLUMN = "outcome"
BASE_COLUMNS = ["prediction_id", "created_at", "model_version"]
TAIL_COLUMNS = [PROBABILITY_COLUMN, "risk_tier", OUTCOME_COLUMN]
LOG_COLUMNS = frozenset(BASE_COLUMNS + TAIL_COLUMNS)


def read_predictions(database_url: str, since: datetime | None = None) -> pd.DataFrame:
    """The prediction log joined with feedback: one row per prediction, one column per feature.

    Columns: prediction_id, created_at (UTC), model_version, every feature seen in the stored
    batches (in first-seen order; missing where a batch lacks it), probability, risk_tier,
    outcome (1.0/0.0, NaN without feedback). Ordered by time, then id.
    """
    engine = make_engine(database_url)
    batches_q = select(prediction_batches).order_by(
        prediction_batches.c.created_at, prediction_batches.c.batch_id
    )
    feedback_q = select(feedback.c.prediction_id, feedback.c.outcome).join(
        prediction_batches, feedback.c.batch_id == prediction_batches.c.batch_id
    )
    if since is not None:
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        batches_q = batches_q.where(prediction_batches.c.created_at >= since)
        feedback_q = feedback_q.where(prediction_batches.c.created_at >= since)
    try:
        with engine.connect() as conn:
            batches = conn.execute(batches_q).all()
            outcomes = {pid: outcome for pid, outcome in conn.execute(feedback_q)}
    except SQLAlchemyError as exc:
        if "no such table" in str(exc) or "does not exist" in str(exc):
            batches, outcomes = [], {}
        else:
            raise PredictionLogError(
                f"{engine.url.render_as_string(hide_password=True)}: cannot read the "
                f"prediction log ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            ) from None
    finally:
        engine.dispose()
    return _to_frame(batches, outcomes)


def _to_frame(batches: Sequence[Any], outcomes: Mapping[str, int]) -> pd.DataFrame:
    ids: list[str] = []
    created: list[datetime] = []
    versions: list[str] = []
    probabilities: list[float] = []
    tiers: list[str] = []
    features: dict[str, list[Any]] = {}
    for b in batches:
        n = b.rows
        ids += prediction_ids(b.batch_id, n)
        created += [_utc(b.created_at)] * n
        versions += [b.model_version] * n
        probabilities += b.probabilities
        tiers += b.risk_tiers
        for name, values in (b.features or {}).items():
            if name in LOG_COLUMNS:
                continue
            # a feature first seen now is missing for every earlier row
            column = features.setdefault(name, [None] * (len(ids) - n))
            column += values
        for column in features.values():
            if len(column) < len(ids):  # a feature this batch lacks
                column += [None] * (len(ids) - len(column))
    base = pd.DataFrame(
        {
            "prediction_id": ids,
            "created_at": pd.to_datetime(created, utc=True),
            "model_version": versions,
        }
    )
    tail = pd.DataFrame(
        {
            PROBABILITY_COLUMN: np.asarray(probabilities, dtype=float),
            "risk_tier": tiers,
            OUTCOME_COLUMN: np.asarray([outcomes.get(i, np.nan) for i in ids], dtype=float),
        }
    )
    # pandas infers each column: numbers with gaps become float with NaN, text stays object
    middle = pd.DataFrame({name: pd.Series(values) for name, values in features.items()})
    return pd.concat([base, middle], axis=1).join(tail) if len(middle.columns) else base.join(tail)


def _utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes (stored as UTC); PostgreSQL returns aware ones."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
