"""Loading and validating training data: real, messy exports train without hand cleaning.

Blank cells become missing values (imputed inside the pipeline), the target may be written as
0/1, true/false or yes/no, and anything that cannot be used is refused with a message naming
the file and column.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churn.bundle import sha256_file
from churn.config import Config

_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f"}


class DataValidationError(ValueError):
    """The data cannot be trained on; the message names the file and the column."""


@dataclass(frozen=True)
class TrainingData:
    features: pd.DataFrame
    target: pd.Series
    path: Path
    digest: str
    dropped_unlabelled: int


def read_table(path: Path) -> pd.DataFrame:
    """Read CSV or Parquet; blank and whitespace-only cells are missing."""
    if not path.exists():
        raise DataValidationError(f"{path}: data file not found")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, skipinitialspace=True, keep_default_na=True)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataValidationError(f"{path}: cannot be read as a table ({exc})") from None
    if df.empty:
        raise DataValidationError(f"{path}: has no rows")
    df.columns = [str(c).strip() for c in df.columns]
    return df.replace(r"^\s*$", np.nan, regex=True)


def _check_columns(df: pd.DataFrame, config: Config, path: Path) -> None:
    columns = list(df.columns)
    for section, names in (
        ("features.numeric", config.features.numeric),
        ("features.categorical", config.features.categorical),
        ("data.target_column", [config.data.target_column]),
    ):
        for name in names:
            if name not in df.columns:
                hint = difflib.get_close_matches(name, columns, n=1)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
                raise DataValidationError(
                    f"config: {section} names '{name}', which is not a column of {path}{suggestion}"
                )


def coerce_target(series: pd.Series, name: str, path: Path) -> pd.Series:
    """Map 0/1, true/false, yes/no (any case) to 0/1; NaN stays NaN."""
    text = series.map(lambda v: v if pd.isna(v) else str(v).strip().lower())
    unknown = sorted({v for v in text.dropna().unique() if v not in _TRUE | _FALSE})
    if unknown:
        shown = ", ".join(repr(v) for v in unknown[:5])
        raise DataValidationError(
            f"{path}: target column '{name}' must be binary (0/1, true/false or yes/no); "
            f"found {shown}"
        )
    return text.map(lambda v: np.nan if pd.isna(v) else float(v in _TRUE))


def _coerce_numeric(df: pd.DataFrame, names: list[str], path: Path) -> None:
    for name in names:
        values = pd.to_numeric(df[name], errors="coerce")
        bad = df[name].notna() & values.isna()
        if bad.any():
            example = df.loc[bad, name].iloc[0]
            raise DataValidationError(
                f"{path}: numeric column '{name}' has {int(bad.sum())} non-numeric value(s), "
                f"e.g. {example!r} in row {int(bad.idxmax()) + 2}"
            )
        infinite = np.isinf(values.to_numpy(dtype=float, na_value=np.nan))
        if infinite.any():
            raise DataValidationError(f"{path}: numeric column '{name}' has infinite values")
        df[name] = values.astype(float)


def clean_category(value: Any) -> str | None:
    """The one normalisation of a categorical value, for training and every serving backend:
    missing (None or NaN) is None, anything else its text with surrounding whitespace removed.
    Case is kept: categories are labels, and "fiber optic" is a different label from "Fiber
    optic" (served answers warn that it was scored as unknown)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return str(value).strip()


def prepare_features(df: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """The frame the pipeline expects: float numerics, object-typed categories (NaN if missing),
    categories normalised by `clean_category`."""
    out = pd.DataFrame(index=df.index)
    for name in numeric:
        out[name] = pd.to_numeric(df[name], errors="coerce").astype(float)
    for name in categorical:
        column = df[name].astype(object)
        cleaned = {v: clean_category(v) for v in column.dropna().unique()}
        out[name] = column.map(cleaned).where(column.notna(), np.nan).astype(object)
    return out


PreparedColumns = dict[str, Any]


def prepare_columns(
    columns: Mapping[str, Sequence[Any] | np.ndarray], numeric: list[str], categorical: list[str]
) -> PreparedColumns:
    """Columns as every backend receives them (see `prepare_features` for frames): numerics a
    float64 array (missing as NaN), categories a list of `clean_category` values (missing as
    None). Each distinct category is cleaned once, so a large batch costs a dict lookup per
    value, in C."""
    out: PreparedColumns = {}
    for name in numeric:
        out[name] = np.asarray(columns[name], dtype=np.float64)
    for name in categorical:
        values = columns[name]
        cleaned = {v: clean_category(v) for v in set(values)}
        out[name] = list(map(cleaned.__getitem__, values))
    return out


def load_training_data(config: Config) -> TrainingData:
    """Read, validate and type the training data named in the config."""
    path = config.data.train_path
    df = read_table(path)
    _check_columns(df, config, path)
    target_name = config.data.target_column
    target = coerce_target(df[target_name], target_name, path)
    _coerce_numeric(df, config.features.numeric, path)
    labelled = target.notna()
    df, target = df.loc[labelled], target.loc[labelled].astype(int)
    classes = sorted(target.unique())
    if len(classes) < 2:
        raise DataValidationError(
            f"{path}: target column '{target_name}' has only one class ({classes}); "
            "a classifier needs both churned and retained customers"
        )
    minority = int(target.value_counts().min())
    if minority < 10:
        raise DataValidationError(
            f"{path}: target column '{target_name}' has only {minority} rows of one class; "
            "need at least 10 to split and evaluate"
        )
    features = prepare_features(df, config.features.numeric, config.features.categorical)
    return TrainingData(
        features=features.reset_index(drop=True),
        target=target.reset_index(drop=True),
        path=path,
        digest=sha256_file(path),
        dropped_unlabelled=int((~labelled).sum()),
    )
