"""The prediction log: every served prediction in a SQL store, written off the request path.

One row per request (a batch of predictions), its features, probabilities and risk tiers
stored column-wise as JSON. The log's cost then grows with requests, not rows: a 1,000-row
batch is one insert of a few JSON arrays, where a row per prediction cost about 20 µs of
CPU each in Python and SQLite (20 ms per 1,000-row call, more than the model), and the
writer fell behind and dropped records under batch traffic. SQLite by default, PostgreSQL
when the URL says so.

A package by job, each module small enough to hold in one's head:

- ``ids``: the batch-id format and prediction ids (batch id + position in the batch);
- ``schema``: the tables, engines with bounded waits, the store's error type;
- ``writer``: :class:`PredictionBatch` and :class:`PredictionLogWriter`, the bounded queue
  and writer thread that never block serving and count every record written or dropped;
- ``spool``: each worker's append-only spool, written before an answer is sent, so a
  worker killed outright loses nothing: a live worker adopts and writes what it left;
- ``reader``: feedback by prediction id, and :func:`read_predictions`, the log expanded to
  one row per prediction joined with feedback (the drift and live-accuracy jobs read it),
  and :func:`read_paired`, the pairs of a rollout (served row + the other model's score).

Everything is importable from ``churn.prediction_log`` as before.
"""

from churn.prediction_log.ids import (
    BATCH_ID_CHARS,
    BATCH_RANDOM_CHARS,
    INDEX_CHARS,
    MAX_BATCH_ROWS,
    new_batch_id,
    prediction_ids,
    split_prediction_id,
)
from churn.prediction_log.reader import (
    BASE_COLUMNS,
    LOG_COLUMNS,
    OUTCOME_COLUMN,
    PAIRED_COLUMNS,
    PROBABILITY_COLUMN,
    TAIL_COLUMNS,
    prediction_exists,
    read_paired,
    read_predictions,
    record_feedback,
)
from churn.prediction_log.schema import (
    DEFAULT_WRITE_TIMEOUT,
    PredictionLogError,
    create_tables,
    feedback,
    make_engine,
    metadata,
    normalise_url,
    prediction_batches,
    shadow_predictions,
)
from churn.prediction_log.spool import Spool, SpoolPosition, orphans
from churn.prediction_log.writer import (
    PREDICTIONS_PER_STATEMENT,
    ROWS_PER_STATEMENT,
    DropCallback,
    LogBatch,
    PredictionBatch,
    PredictionLogWriter,
    ShadowBatch,
    _statement_groups,
    write_batches,
    write_log,
)

__all__ = [
    "BASE_COLUMNS",
    "BATCH_ID_CHARS",
    "BATCH_RANDOM_CHARS",
    "DEFAULT_WRITE_TIMEOUT",
    "INDEX_CHARS",
    "LOG_COLUMNS",
    "MAX_BATCH_ROWS",
    "OUTCOME_COLUMN",
    "PAIRED_COLUMNS",
    "PREDICTIONS_PER_STATEMENT",
    "PROBABILITY_COLUMN",
    "ROWS_PER_STATEMENT",
    "TAIL_COLUMNS",
    "DropCallback",
    "LogBatch",
    "PredictionBatch",
    "PredictionLogError",
    "PredictionLogWriter",
    "ShadowBatch",
    "Spool",
    "SpoolPosition",
    "_statement_groups",
    "create_tables",
    "feedback",
    "make_engine",
    "metadata",
    "new_batch_id",
    "normalise_url",
    "orphans",
    "prediction_batches",
    "prediction_exists",
    "prediction_ids",
    "read_paired",
    "read_predictions",
    "record_feedback",
    "shadow_predictions",
    "split_prediction_id",
    "write_batches",
    "write_log",
]
