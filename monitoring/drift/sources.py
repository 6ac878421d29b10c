"""Where the drift job's two sides come from: the reference and the current data.

Reference: a model bundle's metadata.json (feature schema, training profile, risk section) or
a CSV/Parquet of reference rows whose feature lists come from the config (the one source of
truth for the schema). Current: a table file or a window of the prediction log. Tables are
read by ``churn.data.read_table`` (the reader training uses, with its errors); a prediction
log that does not exist is an error naming the file, never a new empty store.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from churn.config import ConfigError, RiskConfig, load_config
from churn.data import DataValidationError, read_table
from churn.profile import ProfileError, ReferenceProfile
from churn.stores import StoreNotFoundError, require_existing_sqlite
from monitoring.drift.results import DriftInputError

# Columns of the frame churn.prediction_log.read_predictions returns (besides the features).
PROBABILITY_COLUMN = "probability"
OUTCOME_COLUMN = "outcome"
PREDICTION_ID_COLUMN = "prediction_id"
VERSION_COLUMN = "model_version"


@dataclass(frozen=True)
class ReferenceSource:
    """What the reference side brings: the feature lists, their statistics, the decision
    threshold the model's answers were made with (for live precision/recall)."""

    numeric: list[str]
    categorical: list[str]
    profile: ReferenceProfile
    label: str
    decision_threshold: float
    # the bundle's metadata, when the reference is one (calibrator, segments, validation rows)
    metadata: dict[str, Any] | None = None

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]


def load_reference(path: Path, config_path: Path = Path("config.yaml")) -> ReferenceSource:
    """A bundle's metadata.json (schema + profile), or a table of reference rows described by
    the config at `config_path` (feature lists; the decision threshold of its risk section)."""
    if not path.is_file():
        raise DriftInputError(
            f"{path}: reference file not found (train a model or pass --reference)"
        )
    if path.suffix.lower() == ".json":
        return reference_from_metadata(path)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise DriftInputError(
            f"{exc} (a reference table takes its feature lists from the config; pass --config)"
        ) from exc
    frame = read_frame(path)
    numeric, categorical = config.features.numeric, config.features.categorical
    check_columns(frame, [*numeric, *categorical], str(path))
    predictions = frame.get(PROBABILITY_COLUMN)
    profile = ReferenceProfile.from_frame(frame, numeric, categorical, predictions)
    return ReferenceSource(
        list(numeric),
        list(categorical),
        profile,
        f"{path} ({len(frame):,} rows)",
        config.risk.decision_threshold,
    )


def reference_from_metadata(path: Path) -> ReferenceSource:
    """The schema, training profile and risk section a bundle's metadata.json carries."""
    from pydantic import ValidationError

    from churn.schema import FeatureSchema

    try:
        metadata = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DriftInputError(f"{path}: not readable as JSON ({exc})") from exc
    for key in ("feature_schema", "reference_profile"):
        if not isinstance(metadata, dict) or key not in metadata:
            raise DriftInputError(
                f"{path}: no '{key}' entry; is this a model bundle's metadata.json "
                "(retrain to add a reference profile)?"
            )
    try:
        schema = FeatureSchema.from_dict(metadata["feature_schema"])
        profile = ReferenceProfile.from_dict(metadata["reference_profile"])
        profile.require(schema.numeric, schema.categorical)
        # The same rules as the config's risk section (an absent one means its defaults).
        risk = RiskConfig.model_validate(metadata.get("risk") or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DriftInputError(f"{path}: risk.{where}: {first['msg']}") from exc
    except (ProfileError, ValueError) as exc:
        first_line = str(exc).splitlines()[0]
        raise DriftInputError(f"{path}: {first_line}") from exc
    version = metadata.get("version") or metadata.get("model_version") or "?"
    label = f"{path} (model {version}, {profile.n_rows:,} training rows)"
    return ReferenceSource(
        schema.numeric, schema.categorical, profile, label, risk.decision_threshold, metadata
    )


def read_frame(path: Path) -> pd.DataFrame:
    """A CSV or Parquet table through churn.data's reader; its one-line errors, as input errors."""
    try:
        return read_table(path)
    except DataValidationError as exc:
        raise DriftInputError(str(exc)) from exc


def load_current_from_log(database_url: str, since: timedelta) -> tuple[pd.DataFrame, str]:
    """Prediction-log rows of the last ``since`` (features, probability, outcome).

    A SQLite URL whose file does not exist is refused before connecting: connecting would
    create an empty store, and an empty store reads as "no traffic", not as the typo it is.
    """
    from churn.prediction_log import PredictionLogError, read_predictions

    try:
        require_existing_sqlite(database_url, "prediction log")
    except StoreNotFoundError as exc:
        raise DriftInputError(str(exc)) from exc
    start = datetime.now(UTC) - since
    try:
        frame = read_predictions(database_url, since=start)
    except PredictionLogError as exc:
        raise DriftInputError(str(exc)) from exc
    return frame, f"prediction log since {start.isoformat(timespec='seconds')}"


def check_columns(frame: pd.DataFrame, features: Sequence[str], label: str) -> None:
    """Schema mismatch is an error naming the first absent column (none when there are no rows:
    an empty window is 'insufficient data', not a broken schema)."""
    if frame.empty:
        return
    absent = [f for f in features if f not in frame.columns]
    if absent:
        raise DriftInputError(
            f"{label}: feature column '{absent[0]}' is missing"
            + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else "")
        )


def with_columns(frame: pd.DataFrame, features: Sequence[str]) -> pd.DataFrame:
    """An empty log window has no feature columns at all; give it empty ones."""
    absent = [f for f in features if f not in frame.columns]
    if not absent:
        return frame
    return frame.assign(**{f: pd.Series(dtype=float) for f in absent})


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """'90s', '15m', '24h', '7d' → timedelta (an argparse type: the window to read)."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a duration; use a positive number with s, m, h or d (e.g. 24h)"
        )
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
