"""Helpers for the rollout tests: a paired prediction log written as the API writes it."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from sqlalchemy import insert

from app.ids import RandomHex
from churn.prediction_log import (
    PredictionBatch,
    create_tables,
    make_engine,
    record_feedback,
    shadow_predictions,
    write_batches,
)
from churn.risk import risk_tiers

FEATURES = [
    "tenure",
    "monthly_charges",
    "total_charges",
    "num_products",
    "contract_type",
    "payment_method",
    "internet_service",
]


def write_pairs(
    database_url: str,
    customers: pd.DataFrame,
    served_version: str,
    shadow_version: str,
    served: np.ndarray,
    other: np.ndarray,
    labelled: int,
    batch_rows: int = 50,
) -> None:
    """`customers` answered by `served_version` with `served` probabilities, the other model's
    `other` in shadow_predictions, in batches of `batch_rows`; the first `labelled` rows get
    their true outcome (the `churned` column) as feedback."""
    engine = make_engine(database_url)
    ids = RandomHex()
    values = customers[FEATURES].astype(object).where(customers[FEATURES].notna(), None)
    outcomes = customers["churned"].astype(int).to_numpy()
    try:
        create_tables(engine)
        done = 0
        for start in range(0, len(customers), batch_rows):
            stop = min(start + batch_rows, len(customers))
            p, q = served[start:stop], other[start:stop]
            batch = PredictionBatch(
                batch_id=ids.batch_id(),
                created_at=time.time(),
                model_version=served_version,
                columns={name: values[name].iloc[start:stop].tolist() for name in FEATURES},
                probabilities=[float(x) for x in p],
                tiers=risk_tiers(p, 0.75, 0.45).tolist(),
            )
            write_batches(engine, [batch])
            with engine.begin() as conn:
                conn.execute(
                    insert(shadow_predictions).values(
                        batch_id=batch.batch_id,
                        model_version=shadow_version,
                        served_version=served_version,
                        created_at=datetime.now(UTC),
                        rows=len(q),
                        probabilities=[float(x) for x in q],
                        risk_tiers=risk_tiers(q, 0.75, 0.45).tolist(),
                    )
                )
            for pid, outcome in zip(batch.ids, outcomes[start:stop], strict=True):
                if done < labelled:
                    record_feedback(engine, pid, bool(outcome))
                    done += 1
    finally:
        engine.dispose()
