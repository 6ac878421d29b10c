"""Per-row validation of a customer table against the bundle's feature schema.

The rules are the schema's own (``FeatureSpec.min``/``max``/``integer``/``allowed``, the ones
the API builds its request model from), applied column-wise to a pandas batch so a bad row
is *reported* (``status="invalid"`` plus reasons) instead of failing the job. Missing values
are imputed by the model's pipeline, so they are valid unless ``allow_missing`` is off; a
value the pipeline cannot impute or compare (text in a numeric column, an infinity, a number
beyond float32 which the compiled and ONNX backends compute in) is a bad row.

Reason codes are ``<feature>:<code>`` with ``code`` one of :data:`REASONS`; the job counts
them, people read the ``error`` message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from churn.schema import FeatureSchema, FeatureSpec

STATUS_OK, STATUS_INVALID = "ok", "invalid"
# What each reason code means; README "Nightly scoring on Spark" lists the same.
REASONS = {
    "missing": "no value, and missing values are not accepted (--no-allow-missing)",
    "wrong_type": "not a number",
    "not_finite": "an infinity (cannot be imputed or compared)",
    "below_min": "below the feature's minimum",
    "above_max": "above the feature's maximum (or beyond float32)",
    "not_integer": "a fraction where the feature is an integer",
    "not_allowed": "not one of the feature's allowed categories",
}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class ValidatedBatch:
    """One batch after validation: a mask, per-row reasons, and model-ready columns."""

    valid: np.ndarray  # bool per row
    reasons: list[list[str]]  # "<feature>:<code>" per row (empty when valid)
    messages: list[str | None]  # human-readable error per row (None when valid)
    columns: dict[str, Any]  # feature -> values of the VALID rows, as the predictors take them


def _numeric_values(raw: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Float values (NaN when missing) and a mask of values that are not numbers at all."""
    if pd.api.types.is_bool_dtype(raw):
        return np.full(len(raw), np.nan), raw.notna().to_numpy()
    if pd.api.types.is_numeric_dtype(raw):
        return raw.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(len(raw), dtype=bool)
    text = raw.astype(object)
    values = pd.to_numeric(text.where(text.notna(), None), errors="coerce")
    array = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return array, (text.notna() & values.isna()).to_numpy()


def _numeric_checks(
    spec: FeatureSpec, values: np.ndarray, wrong_type: np.ndarray, allow_missing: bool
) -> dict[str, np.ndarray]:
    missing = np.isnan(values) & ~wrong_type
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        upper = spec.max if spec.max is not None else _FLOAT32_MAX
        checks = {
            "wrong_type": wrong_type,
            "not_finite": np.isinf(values),
            "below_min": finite & (values < spec.min)
            if spec.min is not None
            else np.zeros_like(finite),
            "above_max": finite & (values > upper),
            "not_integer": finite & (np.mod(values, 1.0) != 0)
            if spec.integer
            else np.zeros_like(finite),
        }
    if not allow_missing:
        checks["missing"] = missing
    return checks


def _categorical_values(raw: pd.Series) -> list[str | None]:
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in raw]


def _categorical_checks(
    spec: FeatureSpec, values: Sequence[str | None], allow_missing: bool
) -> dict[str, np.ndarray]:
    missing = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    checks: dict[str, np.ndarray] = {}
    if spec.allowed:
        allowed = frozenset(spec.allowed)
        checks["not_allowed"] = np.fromiter(
            (v is not None and v not in allowed for v in values), dtype=bool, count=len(values)
        )
    if not allow_missing:
        checks["missing"] = missing
    return checks


def _describe(spec: FeatureSpec, code: str, value: Any) -> str:
    if isinstance(value, np.generic):  # numpy 2 writes np.float64(-3.0) otherwise
        value = value.item()
    shown = "missing" if value is None else repr(value)
    if code == "below_min":
        return f"{spec.name}: {shown} is below the minimum {spec.min:g}"
    if code == "above_max":
        limit = spec.max if spec.max is not None else _FLOAT32_MAX
        return f"{spec.name}: {shown} is above the maximum {limit:g}"
    if code == "not_allowed":
        return f"{spec.name}: {shown} is not one of {spec.allowed}"
    return f"{spec.name}: {shown} is {REASONS[code]}"


def validate_batch(
    frame: pd.DataFrame, schema: FeatureSchema, *, allow_missing: bool = True
) -> ValidatedBatch:
    """Check every row of ``frame`` against ``schema``; never raises for a bad value."""
    n = len(frame)
    reasons: list[list[str]] = [[] for _ in range(n)]
    messages: list[list[str]] = [[] for _ in range(n)]
    parsed: dict[str, Any] = {}
    for spec in schema.features:
        raw = frame[spec.name]
        if spec.kind == "numeric":
            values, wrong_type = _numeric_values(raw)
            checks = _numeric_checks(spec, values, wrong_type, allow_missing)
            parsed[spec.name] = values
            shown: Any = raw
        else:
            cats = _categorical_values(raw)
            checks = _categorical_checks(spec, cats, allow_missing)
            parsed[spec.name] = cats
            shown = cats
        for code, mask in checks.items():
            for row in np.flatnonzero(mask):
                value = shown.iloc[row] if isinstance(shown, pd.Series) else shown[row]
                reasons[row].append(f"{spec.name}:{code}")
                messages[row].append(_describe(spec, code, None if pd.isna(value) else value))
    valid = np.fromiter((not r for r in reasons), dtype=bool, count=n)
    keep = np.flatnonzero(valid)
    columns: dict[str, Any] = {}
    for spec in schema.features:
        values = parsed[spec.name]
        if spec.kind == "numeric":
            columns[spec.name] = values[keep]
        else:
            columns[spec.name] = values if keep.size == n else [values[i] for i in keep]
    return ValidatedBatch(
        valid=valid,
        reasons=reasons,
        messages=["; ".join(m) if m else None for m in messages],
        columns=columns,
    )
