"""Helpers for the rollout tests: a paired prediction log written as the API writes it
(served batches and shadow scores through the log writer's own insert, write_log)."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pandas as pd
import yaml

from app.ids import RandomHex
from churn.prediction_log import (
    PredictionBatch,
    ShadowBatch,
    create_tables,
    make_engine,
    record_feedback,
    write_log,
)
from churn.risk import risk_tiers
from tests.conftest import ROOT

# The feature schema's one source: the config (numeric, then categorical).
_SCHEMA = yaml.safe_load((ROOT / "config.yaml").read_text())["features"]
FEATURES: list[str] = [*_SCHEMA["numeric"], *_SCHEMA["categorical"]]
INTEGER_FEATURES = {name for name, rule in _SCHEMA["rules"].items() if rule.get("integer")}


def as_request(row: pd.Series) -> dict[str, Any]:
    """A JSON body for /predict from a generated customer (missing values as null)."""
    out: dict[str, Any] = {}
    for name in FEATURES:
        value = row[name]
        if isinstance(value, str):
            out[name] = value
        elif pd.isna(value):
            out[name] = None
        else:
            out[name] = int(value) if name in INTEGER_FEATURES else float(value)
    return out


def api_env(model_name: str, tracking_uri: str, log_url: str, **extra: str) -> dict[str, str]:
    """The environment of an API following `model_name@production` on a real registry, its
    prediction log at `log_url`, watching every second (multiprocess metrics off)."""
    env = {
        **os.environ,
        "MODEL_URI": f"models:/{model_name}@production",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MODEL_WATCH_INTERVAL": "1",
        "MODEL_REQUIRED": "true",
        "DATABASE_URL": log_url,
        "PREDICTION_LOG_FLUSH_INTERVAL": "0.1",
        "LOG_LEVEL": "WARNING",
        "ENVIRONMENT": "test",
        **extra,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


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
            shadow = ShadowBatch(
                batch_id=batch.batch_id,
                created_at=batch.created_at,
                model_version=shadow_version,
                served_version=served_version,
                probabilities=[float(x) for x in q],
                tiers=risk_tiers(q, 0.75, 0.45).tolist(),
            )
            write_log(engine, [batch, shadow])  # what the API's writer thread does
            for pid, outcome in zip(batch.ids, outcomes[start:stop], strict=True):
                if done < labelled:
                    record_feedback(engine, pid, bool(outcome))
                    done += 1
    finally:
        engine.dispose()
