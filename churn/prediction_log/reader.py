"""Reading the log: feedback by prediction id, and the log as one row per prediction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, and_, delete, insert, or_, select
from sqlalchemy.exc import SQLAlchemyError

from churn.prediction_log.ids import prediction_ids, split_prediction_id
from churn.prediction_log.schema import (
    PredictionLogError,
    feedback,
    make_engine,
    prediction_batches,
    shadow_predictions,
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
    batches, outcomes = _fetch(engine, batches_q, feedback_q)
    return _to_frame(batches, outcomes)


def _fetch(engine: Engine, query: Any, feedback_q: Any) -> tuple[Sequence[Any], dict[str, int]]:
    """The rows of `query` and the outcomes of `feedback_q` (empty when the log has no tables
    yet); PredictionLogError, credential-free, when the store cannot be read. Disposes of
    `engine`."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(query).all()
            outcomes = {pid: outcome for pid, outcome in conn.execute(feedback_q)}
    except SQLAlchemyError as exc:
        if "no such table" in str(exc) or "does not exist" in str(exc):
            return [], {}
        raise PredictionLogError(
            f"{engine.url.render_as_string(hide_password=True)}: cannot read the "
            f"prediction log ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    finally:
        engine.dispose()
    return rows, outcomes


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


# --------------------------------------------------------------------------- paired (rollouts)

CHAMPION_ROLE = "champion"
CHALLENGER_ROLE = "challenger"
# The columns of read_paired's frame besides the features.
PAIRED_COLUMNS = [
    "prediction_id",
    "batch_id",
    "created_at",
    "served_version",
    "served_role",
    "champion_probability",
    "challenger_probability",
    "champion_tier",
    "challenger_tier",
    OUTCOME_COLUMN,
]


def read_paired(
    database_url: str, champion: str, challenger: str, since: datetime | None = None
) -> pd.DataFrame:
    """Every prediction both models made about the same row: one row per pair.

    A served batch in ``prediction_batches`` joined by ``batch_id`` with what the other model
    said about it in ``shadow_predictions`` (in shadow the challenger, in canary the champion
    for the rows the challenger answered), exploded per row with its prediction id and joined
    with feedback. Only pairs of these two versions count: a batch served by `champion` with a
    shadow row of `challenger`, or the other way round. A shadow row whose row count differs
    from its served batch cannot be paired row by row and is left out (``attrs['unpaired']``
    counts them, so a report can say so).

    Columns: PAIRED_COLUMNS plus every feature seen, ordered by time then id.
    """
    engine = make_engine(database_url)
    sb, pb = shadow_predictions, prediction_batches
    pair = or_(
        and_(sb.c.model_version == challenger, sb.c.served_version == champion),
        and_(sb.c.model_version == champion, sb.c.served_version == challenger),
    )
    query = (
        select(
            pb.c.batch_id,
            pb.c.created_at,
            pb.c.model_version,
            pb.c.rows,
            pb.c.features,
            pb.c.probabilities,
            pb.c.risk_tiers,
            sb.c.model_version.label("shadow_version"),
            sb.c.rows.label("shadow_rows"),
            sb.c.probabilities.label("shadow_probabilities"),
            sb.c.risk_tiers.label("shadow_tiers"),
        )
        .join(sb, sb.c.batch_id == pb.c.batch_id)
        .where(pair, pb.c.model_version == sb.c.served_version)
        .order_by(pb.c.created_at, pb.c.batch_id)
    )
    feedback_q = (
        select(feedback.c.prediction_id, feedback.c.outcome)
        .join(sb, feedback.c.batch_id == sb.c.batch_id)
        .where(pair)
    )
    if since is not None:
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        query = query.where(pb.c.created_at >= since)
        feedback_q = feedback_q.where(sb.c.created_at >= since)
    rows, outcomes = _fetch(engine, query, feedback_q)
    return _paired_frame(rows, outcomes, champion)


def _paired_frame(rows: Sequence[Any], outcomes: Mapping[str, int], champion: str) -> pd.DataFrame:
    served = [r for r in rows if r.rows == r.shadow_rows]
    unpaired = len(rows) - len(served)
    base = _to_frame(served, outcomes).drop(
        columns=["model_version", PROBABILITY_COLUMN, "risk_tier"]
    )
    served_p: list[float] = []
    other_p: list[float] = []
    served_t: list[str] = []
    other_t: list[str] = []
    batch_ids: list[str] = []
    versions: list[str] = []
    for r in served:
        served_p += r.probabilities
        other_p += r.shadow_probabilities
        served_t += r.risk_tiers
        other_t += r.shadow_tiers
        batch_ids += [r.batch_id] * r.rows
        versions += [r.model_version] * r.rows
    by_champion = np.asarray([v == champion for v in versions], dtype=bool)
    sp = np.asarray(served_p, dtype=float)
    op = np.asarray(other_p, dtype=float)
    st = np.asarray(served_t, dtype=object)
    ot = np.asarray(other_t, dtype=object)
    frame = base.assign(
        batch_id=batch_ids,
        served_version=versions,
        served_role=np.where(by_champion, CHAMPION_ROLE, CHALLENGER_ROLE),
        champion_probability=np.where(by_champion, sp, op),
        challenger_probability=np.where(by_champion, op, sp),
        champion_tier=np.where(by_champion, st, ot),
        challenger_tier=np.where(by_champion, ot, st),
    )
    features = [c for c in base.columns if c not in PAIRED_COLUMNS]
    frame = frame[[*PAIRED_COLUMNS[:-1], *features, OUTCOME_COLUMN]]
    frame.attrs["unpaired"] = unpaired
    return frame
