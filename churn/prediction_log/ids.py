"""Prediction ids: the batch-id format and the id of each prediction in a batch.

A batch id is 12 hex digits of Unix time in milliseconds, then 16 random ones (64 bits): ids
sort by creation time like a UUIDv7's, so the log's primary-key index is appended to, not
written at random pages. A prediction's id is its batch id plus its position in the batch
(4 hex digits): ids name their batch and need no index of their own.
"""

from __future__ import annotations

import time

BATCH_ID_CHARS = 28  # 12 hex: Unix time in ms, 16 hex: random
INDEX_CHARS = 4  # position in the batch, hex
MAX_BATCH_ROWS = 16**INDEX_CHARS  # 65,536 predictions per request at most
_SUFFIXES = [f"{i:0{INDEX_CHARS}x}" for i in range(MAX_BATCH_ROWS)]
_HEX = frozenset("0123456789abcdef")
BATCH_RANDOM_CHARS = 16  # hex digits of randomness in a batch id (64 bits)


def new_batch_id(random_hex: str) -> str:
    """A batch id made now from BATCH_RANDOM_CHARS random hex digits (the caller draws them:
    the API from its bulk CSPRNG pool, app.ids.RandomHex)."""
    if len(random_hex) != BATCH_RANDOM_CHARS:
        raise ValueError(f"a batch id takes {BATCH_RANDOM_CHARS} random hex digits")
    return f"{time.time_ns() // 1_000_000:012x}{random_hex}"


def prediction_ids(batch_id: str, rows: int) -> list[str]:
    """The ids of a batch's predictions, in order."""
    if not 0 < rows <= MAX_BATCH_ROWS:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH_ROWS:,} predictions, not {rows:,}")
    return [batch_id + suffix for suffix in _SUFFIXES[:rows]]


def split_prediction_id(prediction_id: str) -> tuple[str, int] | None:
    """(batch id, position) of a well-formed prediction id; None for anything else."""
    if len(prediction_id) != BATCH_ID_CHARS + INDEX_CHARS or not _HEX.issuperset(prediction_id):
        return None
    return prediction_id[:BATCH_ID_CHARS], int(prediction_id[BATCH_ID_CHARS:], 16)
